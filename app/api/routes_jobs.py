"""/v1 routes for jobs and the rankings list: list, cancel. Logic in ``app.services.jobs``."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict

from app.api.deps import AuthDep, CtxDep, authenticate
from app.api.routes import PublicRoute
from app.api.schemas import JobPublic, errors
from app.services import jobs as jobs_svc

router = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)], responses=errors(400, 401, 403, 422),
                   route_class=PublicRoute)

JobId = Annotated[str, Path(min_length=1, max_length=64, description="a job id")]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]


class JobListPublic(BaseModel):
    model_config = ConfigDict(extra="allow")
    jobs: list[JobPublic]
    limit: int
    offset: int


class RankingSummaryPublic(BaseModel):
    """A ranking without its ranked list (``GET /v1/rankings/{id}`` has it)."""

    model_config = ConfigDict(extra="allow")
    id: str
    status: str
    target: Any = None
    candidates: str | None = None
    job: str | None = None
    progress: float = 0.0
    created_at: str | None = None


class RankingListPublic(BaseModel):
    model_config = ConfigDict(extra="allow")
    rankings: list[RankingSummaryPublic]
    limit: int
    offset: int


@router.get("/jobs", tags=["jobs"], response_model=JobListPublic)
def list_jobs(ctx: CtxDep, principal: AuthDep,
              status: Literal["queued", "running", "done", "failed", "cancelled"] | None = None,
              limit: Limit = 100, offset: Offset = 0) -> JobListPublic:
    """Your jobs (and the public catalogue's), newest first; ``status`` filters."""
    jobs = ctx.jobs.list(status, limit, offset, owner=principal.owner)
    return JobListPublic.model_validate({"jobs": jobs, "limit": limit, "offset": offset})


@router.delete("/jobs/{job_id}", tags=["jobs"], response_model=JobPublic, responses=errors(404, 409))  # 403: public
def cancel_job(ctx: CtxDep, principal: AuthDep, job_id: JobId) -> JobPublic:
    """Cancel a queued or running job: its status turns ``cancelled`` and its computation stops."""
    return JobPublic.model_validate(ctx.jobs.cancel(job_id, principal.owner, principal.is_admin))


@router.get("/rankings", tags=["rankings"], response_model=RankingListPublic)
def list_rankings(ctx: CtxDep, principal: AuthDep, target: Annotated[str | None, Query(max_length=64)] = None,
                  limit: Limit = 100, offset: Offset = 0) -> RankingListPublic:
    """Your rankings, newest first (summaries without the ranked list); ``target`` filters by dataset id."""
    rankings = jobs_svc.list_rankings(ctx, target, limit, offset, owner=principal.owner)
    return RankingListPublic.model_validate({"rankings": rankings, "limit": limit, "offset": offset})
