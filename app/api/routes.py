"""/v1 routes: parse, call a service, shape the response. No logic here.

Every route names its response model (``app.api.schemas.*Public``) and the 4xx codes it can
answer with (body ``ErrorPublic``: ``{"detail": "..."}``).
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

import estimators
from app.api.deps import CtxDep, authenticate, require
from app.api.schemas import (
    DatasetDeletedPublic,
    DatasetListPublic,
    DatasetPublic,
    EstimatorListPublic,
    FeedbackCreate,
    FeedbackListPublic,
    FeedbackPublic,
    JobPublic,
    KeyCreate,
    KeyCreatedPublic,
    KeyListPublic,
    KeyPublic,
    RankingPublic,
    RankingRequest,
    SourceCataloguePublic,
    SourceCreate,
    SourceCreatedPublic,
    SourceDeletedPublic,
    SourcePublic,
    errors,
)
from app.core.errors import TooLarge
from app.services import datasets as datasets_svc
from app.services import feedback as feedback_svc
from app.services import keys as keys_svc
from app.services import rankings as rankings_svc
from app.services import sources as sources_svc

router = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)], responses=errors(400, 401, 403, 422))
admin = APIRouter(prefix="/v1/keys", tags=["keys"], dependencies=[Depends(require("admin"))],
                  responses=errors(400, 401, 403, 422))

CHUNK = 1 << 20
NAME_MAX = 255

#: Identifiers in paths and filters: bounded, so a client cannot send megabytes in a URL.
Id = Annotated[str, Path(min_length=1, max_length=NAME_MAX)]
Filter = Annotated[str | None, Query(max_length=NAME_MAX)]


async def _read_limited(file: UploadFile, limit: int) -> bytes:
    parts, size = [], 0
    while True:
        chunk = await file.read(CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the upload is larger than the limit of {limit} bytes (TRANSFERRANK_MAX_UPLOAD_BYTES)")
        parts.append(chunk)
    return b"".join(parts)


# ---------------------------------------------------------------------- datasets
@router.post("/datasets", tags=["datasets"], status_code=201, response_model=DatasetPublic,
             responses={200: {"model": DatasetPublic, "description": "the same content already exists"},
                        **errors(413)})
async def upload_dataset(ctx: CtxDep, response: Response,
                         file: Annotated[UploadFile, File(description="CSV / JSONL / Parquet (text, label) or "
                                                                      "NPZ (features, labels)")],
                         name: Annotated[str | None, Form(max_length=NAME_MAX)] = None) -> DatasetPublic:
    data = await _read_limited(file, ctx.settings.max_upload_bytes)
    ds, created = await run_in_threadpool(datasets_svc.create_from_upload, ctx, data, file.filename, name)
    response.status_code = 201 if created else 200
    return DatasetPublic.model_validate(datasets_svc.dataset_dict(ds))


@router.get("/datasets", tags=["datasets"], response_model=DatasetListPublic)
def list_datasets(ctx: CtxDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                  offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0) -> DatasetListPublic:
    return DatasetListPublic.model_validate(
        {"datasets": [datasets_svc.dataset_dict(d) for d in datasets_svc.list_all(ctx, limit, offset)]})


@router.get("/datasets/{dataset_id}", tags=["datasets"], response_model=DatasetPublic, responses=errors(404))
def get_dataset(ctx: CtxDep, dataset_id: Id) -> DatasetPublic:
    return DatasetPublic.model_validate(datasets_svc.dataset_dict(datasets_svc.get(ctx, dataset_id)))


@router.delete("/datasets/{dataset_id}", tags=["datasets"], response_model=DatasetDeletedPublic,
               responses=errors(404, 409))
def delete_dataset(ctx: CtxDep, dataset_id: Id) -> DatasetDeletedPublic:
    return DatasetDeletedPublic.model_validate(datasets_svc.delete_dataset(ctx, dataset_id))


# ---------------------------------------------------------------------- sources
@router.get("/sources", tags=["sources"], response_model=SourceCataloguePublic)
def list_sources(ctx: CtxDep) -> SourceCataloguePublic:
    return SourceCataloguePublic.model_validate(sources_svc.list_sources(ctx))


@router.get("/sources/{name}", tags=["sources"], response_model=SourcePublic, responses=errors(404))
def get_source(ctx: CtxDep, name: Id) -> SourcePublic:
    return SourcePublic.model_validate(sources_svc.get_source(ctx, name))


@router.post("/sources", tags=["sources"], status_code=202, response_model=SourceCreatedPublic,
             responses={201: {"model": SourceCreatedPublic,
                              "description": "registered at once (NPZ source with base features)"},
                        **errors(404, 409)})
def create_source(ctx: CtxDep, body: SourceCreate, response: Response) -> SourceCreatedPublic:
    train = body.train.model_dump(exclude_none=True)
    source, queued = sources_svc.register(ctx, body.dataset, body.name, body.description, body.licence,
                                          train_esm=body.train_esm, train=train)
    response.status_code = 202 if queued else 201
    return SourceCreatedPublic.model_validate({"source": source, "job": source["job"] if queued else None,
                                               "status": "queued" if queued else "ready"})


@router.delete("/sources/{name}", tags=["sources"], response_model=SourceDeletedPublic, responses=errors(404, 409))
def delete_source(ctx: CtxDep, name: Id) -> SourceDeletedPublic:
    return SourceDeletedPublic.model_validate(sources_svc.delete_source(ctx, name))


# ---------------------------------------------------------------------- rankings / jobs
@router.post("/rankings", tags=["rankings"], response_model=RankingPublic,
             responses={202: {"model": RankingPublic, "description": "queued as a job (status 'queued')"},
                        **errors(404)})
def create_ranking(ctx: CtxDep, body: RankingRequest, response: Response) -> RankingPublic:
    spec = rankings_svc.RankingSpec(**body.model_dump())
    out, done = rankings_svc.create(ctx, spec)
    response.status_code = 200 if done else 202
    return RankingPublic.model_validate(out)


@router.get("/rankings/{ranking_id}", tags=["rankings"], response_model=RankingPublic, responses=errors(404))
def get_ranking(ctx: CtxDep, ranking_id: Id) -> RankingPublic:
    return RankingPublic.model_validate(rankings_svc.get(ctx, ranking_id))


@router.get("/jobs/{job_id}", tags=["jobs"], response_model=JobPublic, responses=errors(404))
def get_job(ctx: CtxDep, job_id: Id) -> JobPublic:
    return JobPublic.model_validate(ctx.jobs.get(job_id))


# ---------------------------------------------------------------------- feedback / estimators (matrix: routes_matrix)
@router.post("/feedback", tags=["feedback"], status_code=201, response_model=FeedbackPublic,
             responses=errors(404))
def create_feedback(ctx: CtxDep, body: FeedbackCreate) -> FeedbackPublic:
    return FeedbackPublic.model_validate(feedback_svc.create(ctx, body.source, body.target, body.metric, body.value,
                                                             body.higher_is_better, body.note))


@router.get("/feedback", tags=["feedback"], response_model=FeedbackListPublic)
def list_feedback(ctx: CtxDep, target: Filter = None, source: Filter = None) -> FeedbackListPublic:
    return FeedbackListPublic.model_validate({"feedback": feedback_svc.list_all(ctx, target, source)})


@router.get("/estimators", tags=["estimators"], response_model=EstimatorListPublic)
def list_estimators() -> EstimatorListPublic:
    out = []
    for name in estimators.names():
        i = estimators.info(name)
        out.append({"name": name, "needs": i.needs, "higher_is_better": i.higher_is_better, "paper": i.paper,
                    "cost": i.cost, "candidates": "models" if i.needs in ("features", "probs") else "tasks"})
    return EstimatorListPublic.model_validate({"estimators": out, "version": getattr(estimators, "__version__", None),
                                               "defaults": rankings_svc.DEFAULT_ESTIMATORS})


# ---------------------------------------------------------------------- keys (admin)
@admin.get("", response_model=KeyListPublic)
def list_keys(ctx: CtxDep) -> KeyListPublic:
    return KeyListPublic.model_validate({"keys": keys_svc.list_all(ctx)})


@admin.post("", status_code=201, response_model=KeyCreatedPublic)
def create_key(ctx: CtxDep, body: KeyCreate) -> KeyCreatedPublic:
    info, key = keys_svc.create(ctx, body.owner, body.scopes)
    return KeyCreatedPublic.model_validate(dict(info, key=key))


@admin.delete("/{key_id}", response_model=KeyPublic, responses=errors(404))
def revoke_key(ctx: CtxDep, key_id: Id) -> KeyPublic:
    return KeyPublic.model_validate(keys_svc.revoke(ctx, key_id))
