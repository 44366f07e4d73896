"""/v1 routes: parse, call a service, shape the response. No logic here.

Every route names its response model (``app.api.schemas.*Public``) and the 4xx codes it can
answer with (body ``ErrorPublic``: ``{"detail": "..."}``).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Header, Path, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute

import estimators
from app.api.deps import AdminKeyDep, AuthDep, CtxDep, authenticate, authenticate_admin_key
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
from app.services import ranking_memo
from app.services import rankings as rankings_svc
from app.services import sources as sources_svc


class PublicRoute(APIRoute):
    """A route whose body holds the fields the service returned (unset optional fields are left
    out rather than sent as null, e.g. ``ranking`` before a ranking is done)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["response_model_exclude_unset"] = True
        super().__init__(*args, **kwargs)


router = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)], responses=errors(400, 401, 403, 422),
                   route_class=PublicRoute)
admin = APIRouter(prefix="/v1/keys", tags=["keys"], dependencies=[Depends(authenticate_admin_key)],
                  responses=errors(400, 401, 403, 422), route_class=PublicRoute)

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
async def upload_dataset(ctx: CtxDep, principal: AuthDep, response: Response,
                         file: Annotated[UploadFile, File(description="CSV / JSONL / Parquet (text, label) or "
                                                                      "NPZ (features, labels)")],
                         name: Annotated[str | None, Form(max_length=NAME_MAX)] = None,
                         task_type: Annotated[Literal["classification", "regression", "multilabel"] | None,
                                              Form(description="the target type (default: inferred when "
                                                               "unambiguous, else 422)")] = None) -> DatasetPublic:
    data = await _read_limited(file, ctx.settings.max_upload_bytes)
    ds, created = await run_in_threadpool(datasets_svc.create_from_upload, ctx, data, file.filename, name,
                                          owner=principal.owner, task_type=task_type)
    response.status_code = 201 if created else 200
    return DatasetPublic.model_validate(datasets_svc.dataset_dict(ds))


@router.get("/datasets", tags=["datasets"], response_model=DatasetListPublic)
def list_datasets(ctx: CtxDep, principal: AuthDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                  offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0) -> DatasetListPublic:
    rows = datasets_svc.list_all(ctx, limit, offset, owner=principal.owner)
    return DatasetListPublic.model_validate({"datasets": [datasets_svc.dataset_dict(d) for d in rows]})


@router.get("/datasets/{dataset_id}", tags=["datasets"], response_model=DatasetPublic, responses=errors(404))
def get_dataset(ctx: CtxDep, principal: AuthDep, dataset_id: Id) -> DatasetPublic:
    return DatasetPublic.model_validate(datasets_svc.dataset_dict(datasets_svc.get(ctx, dataset_id, principal.owner)))


@router.delete("/datasets/{dataset_id}", tags=["datasets"], response_model=DatasetDeletedPublic,
               responses=errors(404, 409))
def delete_dataset(ctx: CtxDep, principal: AuthDep, dataset_id: Id) -> DatasetDeletedPublic:
    return DatasetDeletedPublic.model_validate(
        datasets_svc.delete_dataset(ctx, dataset_id, principal.owner, principal.is_admin))


# ---------------------------------------------------------------------- sources
@router.get("/sources", tags=["sources"], response_model=SourceCataloguePublic)
def list_sources(ctx: CtxDep, principal: AuthDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                 offset: Annotated[int, Query(ge=0)] = 0, origin: str | None = None, status: str | None = None,
                 base_encoder: str | None = None, q: str | None = None,
                 has_esm: bool | None = None) -> SourceCataloguePublic:
    """One page of source tasks (``total`` counts all that match the filters), and the models."""
    from app.services import catalogue as catalogue_svc

    return SourceCataloguePublic.model_validate(
        catalogue_svc.list_sources(ctx, limit, offset, origin, status, base_encoder, q, has_esm,
                                   owner=principal.owner))


@router.get("/sources/{name}", tags=["sources"], response_model=SourcePublic, responses=errors(404))
def get_source(ctx: CtxDep, principal: AuthDep, name: Id) -> SourcePublic:
    return SourcePublic.model_validate(sources_svc.get_source(ctx, name, principal.owner))


@router.post("/sources", tags=["sources"], status_code=202, response_model=SourceCreatedPublic,
             responses={201: {"model": SourceCreatedPublic,
                              "description": "registered at once (NPZ source with base features)"},
                        **errors(404, 409, 413)})
def create_source(ctx: CtxDep, principal: AuthDep, body: SourceCreate, response: Response) -> SourceCreatedPublic:
    train = body.train.model_dump(exclude_none=True)
    source, queued = sources_svc.register(ctx, body.dataset, body.name, body.description, body.licence,
                                          train_esm=body.train_esm, train=train, owner=principal.owner,
                                          admin=principal.is_admin)
    response.status_code = 202 if queued else 201
    return SourceCreatedPublic.model_validate({"source": source, "job": source["job"] if queued else None,
                                               "status": "queued" if queued else "ready"})


@router.delete("/sources/{name}", tags=["sources"], response_model=SourceDeletedPublic, responses=errors(404, 409))
def delete_source(ctx: CtxDep, principal: AuthDep, name: Id) -> SourceDeletedPublic:
    return SourceDeletedPublic.model_validate(
        sources_svc.delete_source(ctx, name, principal.owner, principal.is_admin))


# ---------------------------------------------------------------------- rankings / jobs
@router.post("/rankings", tags=["rankings"], response_model=RankingPublic,
             responses={202: {"model": RankingPublic, "description": "queued as a job (status 'queued')"},
                        **errors(404, 413)})
def create_ranking(ctx: CtxDep, principal: AuthDep, body: RankingRequest, response: Response,
                   if_none_match: Annotated[str | None, Header()] = None) -> Any:
    spec = rankings_svc.RankingSpec(**body.model_dump(), owner=principal.owner)
    out, done = rankings_svc.create(ctx, spec)
    return _tagged(out, response, if_none_match, 200 if done else 202)


@router.get("/rankings/{ranking_id}", tags=["rankings"], response_model=RankingPublic, responses=errors(404))
def get_ranking(ctx: CtxDep, principal: AuthDep, ranking_id: Id, response: Response,
                if_none_match: Annotated[str | None, Header()] = None) -> Any:
    return _tagged(rankings_svc.get(ctx, ranking_id, principal.owner), response, if_none_match, 200)


def _tagged(out: dict[str, Any], response: Response, if_none_match: str | None, status: int) -> Any:
    """A finished ranking carries an ETag (its content never changes); ``If-None-Match`` -> 304."""
    tag = ranking_memo.etag_for(out)
    if tag is not None:
        if ranking_memo.matches(if_none_match, tag):
            return Response(status_code=304, headers={"ETag": tag})
        response.headers["ETag"] = tag
    response.status_code = status
    return RankingPublic.model_validate(out)


@router.get("/jobs/{job_id}", tags=["jobs"], response_model=JobPublic, responses=errors(404))
def get_job(ctx: CtxDep, principal: AuthDep, job_id: Id) -> JobPublic:
    return JobPublic.model_validate(ctx.jobs.get(job_id, principal.owner))


# ---------------------------------------------------------------------- feedback / estimators (matrix: routes_matrix)
@router.post("/feedback", tags=["feedback"], status_code=201, response_model=FeedbackPublic,
             responses=errors(404, 413))
def create_feedback(ctx: CtxDep, principal: AuthDep, body: FeedbackCreate) -> FeedbackPublic:
    return FeedbackPublic.model_validate(feedback_svc.create(ctx, body.source, body.target, body.metric, body.value,
                                                             body.higher_is_better, body.note,
                                                             owner=principal.owner))


@router.get("/feedback", tags=["feedback"], response_model=FeedbackListPublic)
def list_feedback(ctx: CtxDep, principal: AuthDep, target: Filter = None, source: Filter = None) -> FeedbackListPublic:
    return FeedbackListPublic.model_validate(
        {"feedback": feedback_svc.list_all(ctx, target, source, owner=principal.owner)})


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
def list_keys(ctx: CtxDep, _admin: AdminKeyDep) -> KeyListPublic:
    return KeyListPublic.model_validate({"keys": keys_svc.list_all(ctx)})


@admin.post("", status_code=201, response_model=KeyCreatedPublic, responses=errors(413))
def create_key(ctx: CtxDep, _admin: AdminKeyDep, body: KeyCreate) -> KeyCreatedPublic:
    info, key = keys_svc.create(ctx, body.owner, body.scopes)
    return KeyCreatedPublic.model_validate(dict(info, key=key))


@admin.delete("/{key_id}", response_model=KeyPublic, responses=errors(404))
def revoke_key(ctx: CtxDep, _admin: AdminKeyDep, key_id: Id) -> KeyPublic:
    return KeyPublic.model_validate(keys_svc.revoke(ctx, key_id))
