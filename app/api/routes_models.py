"""/v1/models: register, list, get, enable/disable and delete model candidates (thin; logic in
``app.services.models``)."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import get_ctx, require
from app.services import models as models_svc

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(require())])

_ERRORS = {404: {"description": "no such model"}, 409: {"description": "name taken / built-in / loading"},
           422: {"description": "bad path, kind or options; or the loader's reason it cannot load"}}


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=100, description="the candidate's name in rankings")
    path: str = Field(..., min_length=1, description="a local directory / TorchScript file on the server, or a "
                                                     "hub id already in the local Hugging Face cache")
    kind: Literal["transformers", "sentence-transformers", "torchscript"] | None = Field(
        None, description="default: guessed from the path (a file is TorchScript)")
    modality: Literal["text", "image"] | None = Field(None, description="default: guessed from the model's config")
    pooling: Literal["mean", "cls", "pooler"] | None = Field(None, description="text transformers: default mean")
    layer: int | None = Field(None, description="hidden state to pool (-1 = last, 0 = embeddings)")
    licence: str | None = Field(None, max_length=200, description="default: the model card's licence, if any")
    options: dict = Field(default_factory=dict, description="max_length, normalize, image_size, channels, mean, std")
    wait: float | None = Field(None, ge=0, le=600, description="seconds to wait for the load before answering "
                                                              "202 with the job (default 30)")


class ModelPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool


@router.post("", status_code=201, responses={202: {"description": "still loading: a job"}, **_ERRORS})
async def create_model(body: ModelCreate, ctx=Depends(get_ctx)):
    out, done = await run_in_threadpool(
        models_svc.add, ctx, body.name, body.path, body.kind, body.modality, body.pooling, body.layer, body.licence,
        body.options, wait=body.wait)
    return JSONResponse(out, status_code=201 if done else 202)


@router.get("")
def list_models(modality: Literal["text", "image"] | None = None, origin: str | None = None,
                limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0), ctx=Depends(get_ctx)):
    return models_svc.list_all(ctx, modality, origin, limit, offset)


@router.get("/{name}", responses=_ERRORS)
def get_model(name: str, ctx=Depends(get_ctx)):
    return models_svc.get(ctx, name)


@router.patch("/{name}", responses=_ERRORS)
def patch_model(name: str, body: ModelPatch, ctx=Depends(get_ctx)):
    return models_svc.set_enabled(ctx, name, body.enabled)


@router.delete("/{name}", responses=_ERRORS)
def delete_model(name: str, ctx=Depends(get_ctx)):
    return models_svc.remove(ctx, name)
