"""/v1/sources catalogue routes: import ESMs (hf-dataset-selector layout), export one, bulk register
from a manifest (thin; logic in ``app.services.catalogue``). Owner-scoped: imports and bulk
registrations belong to the caller; export reads only the caller's and the public sources."""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import AuthDep, CtxDep, authenticate
from app.api.routes import NAME_MAX, Id, PublicRoute, _read_limited
from app.api.schemas import SourceCreate, _Public, errors
from app.services import catalogue as catalogue_svc

router = APIRouter(prefix="/v1/sources", tags=["sources"], dependencies=[Depends(authenticate)],
                   responses=errors(400, 401, 403, 422), route_class=PublicRoute)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[SourceCreate] = Field(..., min_length=1, max_length=10_000)


class ImportPublic(_Public):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"imported": 2, "sources": ["hf-imdb", "hf-ag_news"]}]})
    imported: int | None = Field(None, description="sources imported (201)")
    sources: list[str] = Field(default_factory=list)
    status: str | None = Field(None, description="'queued' when a job imports them (202)")
    job: str | None = None


class BulkItemPublic(_Public):
    source: str
    job: str | None = None
    status: str


class BulkPublic(_Public):
    registered: int
    sources: list[BulkItemPublic]


@router.post("/import", status_code=201, response_model=ImportPublic,
             responses={202: {"model": ImportPublic, "description": "many sources: imported on a job"},
                        **errors(409, 413)})
async def import_sources(ctx: CtxDep, principal: AuthDep, response: Response,
                         file: Annotated[UploadFile, File(description="zip: <name>/config.json + "
                                                                      "<name>/model.safetensors, one folder a source")],
                         base_encoder: Annotated[str | None, Form(max_length=100)] = None,
                         prefix: Annotated[str | None, Form(max_length=NAME_MAX)] = None) -> ImportPublic:
    data = await _read_limited(file, ctx.settings.max_upload_bytes)
    out, done = await run_in_threadpool(catalogue_svc.import_upload, ctx, data, base_encoder or None, prefix,
                                        principal.owner)
    response.status_code = 201 if done else 202
    return ImportPublic.model_validate(out)


class EsmPublic(_Public):
    """An ESM as JSON (``format=json``): ``fine_tuned(x) ~= x @ weight.T + bias``."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "name": "my-reviews", "config": {"base_model_name": "sentence-transformers/all-MiniLM-L6-v2"},
        "dim": 384, "weight": [[1.0, 0.0], [0.0, 1.0]], "bias": [0.0, 0.0]}]})
    name: str
    config: dict[str, object]
    dim: int
    weight: list[list[float]]
    bias: list[float]


@router.get("/{name}/esm", response_model=EsmPublic, responses={
    200: {"content": {"application/zip": {}},
          "description": "default: a zip of <name>/config.json + <name>/model.safetensors (hf-dataset-selector "
                         "layout); format=json: the arrays as JSON"},
    **errors(404, 409)})
def export_esm(ctx: CtxDep, principal: AuthDep, name: Id,
               format: Literal["zip", "json"] = "zip") -> Response | EsmPublic:
    if format == "json":
        return EsmPublic.model_validate(catalogue_svc.export_json(ctx, name, principal.owner))
    data = catalogue_svc.export_zip(ctx, name, principal.owner)
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{name}-esm.zip"'})


@router.post("/bulk", status_code=202, response_model=BulkPublic,
             responses=errors(404, 409, 413))
def bulk_register(ctx: CtxDep, principal: AuthDep, body: Manifest) -> BulkPublic:
    entries = [dict(e.model_dump(), train=e.train.model_dump(exclude_none=True)) for e in body.sources]
    return BulkPublic.model_validate(catalogue_svc.bulk_register(ctx, entries, principal.owner, principal.is_admin))
