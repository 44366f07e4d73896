"""/v1/sources catalogue routes: import ESMs (hf-dataset-selector layout), export one, bulk register
from a manifest (thin; logic in ``app.services.catalogue``)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import get_ctx, require
from app.api.routes import _read_limited
from app.api.schemas import SourceCreate
from app.services import catalogue as catalogue_svc

router = APIRouter(prefix="/v1/sources", tags=["sources"], dependencies=[Depends(require())])


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[SourceCreate] = Field(..., min_length=1, max_length=10_000)


@router.post("/import", status_code=201,
             responses={202: {"description": "many sources: imported on a job"},
                        409: {"description": "a source name is taken"},
                        422: {"description": "not the hf-dataset-selector layout, unknown base encoder, bad sizes"}})
async def import_sources(file: UploadFile = File(..., description="zip: <name>/config.json + <name>/model.safetensors"),
                         base_encoder: str | None = Form(None), prefix: str | None = Form(None),
                         ctx=Depends(get_ctx)):
    data = await _read_limited(file, ctx.settings.max_upload_bytes)
    out, done = await run_in_threadpool(catalogue_svc.import_upload, ctx, data, base_encoder or None, prefix)
    return JSONResponse(out, status_code=201 if done else 202)


@router.get("/{name}/esm", response_class=Response,
            responses={200: {"content": {"application/zip": {}}}, 404: {}, 409: {"description": "no ESM"}})
def export_esm(name: str, ctx=Depends(get_ctx)):
    data = catalogue_svc.export_zip(ctx, name)
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{name}-esm.zip"'})


@router.post("/bulk", status_code=202, responses={409: {}, 422: {}, 404: {}})
def bulk_register(body: Manifest, ctx=Depends(get_ctx)):
    entries = [dict(e.model_dump(), train=e.train.model_dump(exclude_none=True)) for e in body.sources]
    return catalogue_svc.bulk_register(ctx, entries)
