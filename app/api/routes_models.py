"""/v1/models: register, list, get, enable/disable and delete model candidates (thin; logic in
``app.services.models``). Owner-scoped: a registered model belongs to the caller; another owner's
model answers 404 like a missing one; public (built-in, demo) models change only with an admin key."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import AuthDep, CtxDep, authenticate
from app.api.routes import Id, PublicRoute
from app.api.schemas import _Public, errors
from app.services import models as models_svc

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(authenticate)],
                   responses=errors(400, 401, 403, 422), route_class=PublicRoute)


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=100, description="the candidate's name in rankings")
    path: str = Field(..., min_length=1, max_length=1000,
                      description="a local directory / TorchScript file on the server, or a hub id already in the "
                                  "local Hugging Face cache (nothing is downloaded)")
    kind: Literal["transformers", "sentence-transformers", "torchscript"] | None = Field(
        None, description="default: guessed from the path (a file is TorchScript)")
    modality: Literal["text", "image"] | None = Field(None, description="default: guessed from the model's config")
    pooling: Literal["mean", "cls", "pooler"] | None = Field(None, description="text transformers: default mean")
    layer: int | None = Field(None, ge=-1000, le=1000, description="hidden state to pool (-1 = last, 0 = embeddings)")
    licence: str | None = Field(None, max_length=200, description="default: the model card's licence, if any")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="max_length, normalize, image_size, channels, mean, std, device")
    wait: float | None = Field(None, ge=0, le=600, description="seconds to wait for the load before answering "
                                                              "202 with the job (default 30)")


class ModelPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool


class UserModelPublic(_Public):
    """A model candidate with what registration recorded (also the 202 body while it loads)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "name": "my-vit", "kind": "transformers", "modality": "image", "dim": 768, "params": 86389248,
        "licence": "Apache-2.0", "origin": "user", "status": "ready", "enabled": True, "family": "vit",
        "n_source_classes": 0, "job": "5e1f…"}]})
    name: str
    kind: str = Field("model", description="transformers | sentence-transformers | torchscript (built-in: "
                                            "their registry kind)")
    dim: int | None = None
    params: int | None = None
    licence: str | None = None
    enabled: bool = True
    modality: str = "text"
    origin: str = Field("builtin", description="builtin | user | demo")
    status: str = Field("ready", description="loading | ready | failed")
    job: str | None = None


class ModelListPublic(_Public):
    models: list[UserModelPublic]
    limit: int
    offset: int


class ModelDeletedPublic(_Public):
    name: str
    deleted: bool


@router.post("", status_code=201, response_model=UserModelPublic,
             responses={202: {"model": UserModelPublic, "description": "still loading: the model with its job"},
                        **errors(409, 413)})
async def create_model(ctx: CtxDep, principal: AuthDep, body: ModelCreate, response: Response) -> UserModelPublic:
    out, done = await run_in_threadpool(
        lambda: models_svc.add(ctx, body.name, body.path, body.kind, body.modality, body.pooling, body.layer,
                               body.licence, body.options, wait=body.wait, owner=principal.owner))
    response.status_code = 201 if done else 202
    return UserModelPublic.model_validate(out)


@router.get("", response_model=ModelListPublic)
def list_models(ctx: CtxDep, principal: AuthDep, modality: Literal["text", "image"] | None = None,
                origin: Annotated[str | None, Query(max_length=16)] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0) -> ModelListPublic:
    return ModelListPublic.model_validate(models_svc.list_all(ctx, modality, origin, limit, offset,
                                                                owner=principal.owner))


@router.get("/{name}", response_model=UserModelPublic, responses=errors(404))
def get_model(ctx: CtxDep, principal: AuthDep, name: Id) -> UserModelPublic:
    return UserModelPublic.model_validate(models_svc.get(ctx, name, principal.owner))


@router.patch("/{name}", response_model=UserModelPublic, responses=errors(404, 413))
def patch_model(ctx: CtxDep, principal: AuthDep, name: Id, body: ModelPatch) -> UserModelPublic:
    return UserModelPublic.model_validate(models_svc.set_enabled(ctx, name, body.enabled, principal.owner,
                                                                 principal.is_admin))


@router.delete("/{name}", response_model=ModelDeletedPublic, responses=errors(404, 409))
def delete_model(ctx: CtxDep, principal: AuthDep, name: Id) -> ModelDeletedPublic:
    return ModelDeletedPublic.model_validate(models_svc.remove(ctx, name, principal.owner, principal.is_admin))
