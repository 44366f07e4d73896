"""/v1 routes: parse, call a service, shape the response. No logic here."""
from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

import estimators
from app.api.deps import get_ctx, require
from app.api.schemas import FeedbackCreate, KeyCreate, RankingRequest, SourceCreate
from app.core.errors import TooLarge
from app.services import datasets as datasets_svc
from app.services import feedback as feedback_svc
from app.services import keys as keys_svc
from app.services import rankings as rankings_svc
from app.services import sources as sources_svc

router = APIRouter(prefix="/v1", dependencies=[Depends(require())])
admin = APIRouter(prefix="/v1/keys", tags=["keys"], dependencies=[Depends(require("admin"))])

CHUNK = 1 << 20


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
@router.post("/datasets", tags=["datasets"], status_code=201,
             responses={200: {"description": "the same content already exists"}, 413: {}, 422: {}})
async def upload_dataset(file: UploadFile = File(...), name: str | None = Form(None), ctx=Depends(get_ctx)):
    data = await _read_limited(file, ctx.settings.max_upload_bytes)
    ds, created = await run_in_threadpool(datasets_svc.create_from_upload, ctx, data, file.filename, name)
    return JSONResponse(datasets_svc.dataset_dict(ds), status_code=201 if created else 200)


@router.get("/datasets", tags=["datasets"])
def list_datasets(limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0), ctx=Depends(get_ctx)):
    return {"datasets": [datasets_svc.dataset_dict(d) for d in datasets_svc.list_all(ctx, limit, offset)]}


@router.get("/datasets/{dataset_id}", tags=["datasets"])
def get_dataset(dataset_id: str, ctx=Depends(get_ctx)):
    return datasets_svc.dataset_dict(datasets_svc.get(ctx, dataset_id))


@router.delete("/datasets/{dataset_id}", tags=["datasets"])
def delete_dataset(dataset_id: str, ctx=Depends(get_ctx)):
    return datasets_svc.delete_dataset(ctx, dataset_id)


# ---------------------------------------------------------------------- sources
@router.get("/sources", tags=["sources"])
def list_sources(ctx=Depends(get_ctx)):
    return sources_svc.list_sources(ctx)


@router.get("/sources/{name}", tags=["sources"])
def get_source(name: str, ctx=Depends(get_ctx)):
    return sources_svc.get_source(ctx, name)


@router.post("/sources", tags=["sources"], status_code=202,
             responses={201: {"description": "registered at once (NPZ source with base features)"}})
def create_source(body: SourceCreate, ctx=Depends(get_ctx)):
    train = body.train.model_dump(exclude_none=True)
    source, queued = sources_svc.register(ctx, body.dataset, body.name, body.description, body.licence,
                                          train_esm=body.train_esm, train=train)
    return JSONResponse({"source": source, "job": source["job"] if queued else None,
                         "status": "queued" if queued else "ready"}, status_code=202 if queued else 201)


@router.delete("/sources/{name}", tags=["sources"])
def delete_source(name: str, ctx=Depends(get_ctx)):
    return sources_svc.delete_source(ctx, name)


# ---------------------------------------------------------------------- rankings / jobs
@router.post("/rankings", tags=["rankings"], responses={202: {"description": "queued as a job"}})
def create_ranking(body: RankingRequest, ctx=Depends(get_ctx)):
    spec = rankings_svc.RankingSpec(**body.model_dump())
    out, done = rankings_svc.create(ctx, spec)
    return JSONResponse(out, status_code=200 if done else 202)


@router.get("/rankings/{ranking_id}", tags=["rankings"])
def get_ranking(ranking_id: str, ctx=Depends(get_ctx)):
    return rankings_svc.get(ctx, ranking_id)


@router.get("/jobs/{job_id}", tags=["jobs"])
def get_job(job_id: str, ctx=Depends(get_ctx)):
    return ctx.jobs.get(job_id)


# ---------------------------------------------------------------------- feedback / estimators (matrix: routes_matrix)
@router.post("/feedback", tags=["feedback"], status_code=201)
def create_feedback(body: FeedbackCreate, ctx=Depends(get_ctx)):
    return feedback_svc.create(ctx, body.source, body.target, body.metric, body.value, body.higher_is_better,
                               body.note)


@router.get("/feedback", tags=["feedback"])
def list_feedback(target: str | None = None, source: str | None = None, ctx=Depends(get_ctx)):
    return {"feedback": feedback_svc.list_all(ctx, target, source)}


@router.get("/estimators", tags=["estimators"])
def list_estimators():
    out = []
    for name in estimators.names():
        i = estimators.info(name)
        out.append({"name": name, "needs": i.needs, "higher_is_better": i.higher_is_better, "paper": i.paper,
                    "cost": i.cost, "candidates": "models" if i.needs in ("features", "probs") else "tasks"})
    return {"estimators": out, "version": getattr(estimators, "__version__", None),
            "defaults": rankings_svc.DEFAULT_ESTIMATORS}


# ---------------------------------------------------------------------- keys (admin)
@admin.get("")
def list_keys(ctx=Depends(get_ctx)):
    return {"keys": keys_svc.list_all(ctx)}


@admin.post("", status_code=201)
def create_key(body: KeyCreate, ctx=Depends(get_ctx)):
    info, key = keys_svc.create(ctx, body.owner, body.scopes)
    return dict(info, key=key)


@admin.delete("/{key_id}")
def revoke_key(key_id: str, ctx=Depends(get_ctx)):
    return keys_svc.revoke(ctx, key_id)
