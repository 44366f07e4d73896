"""/v1 routes for jobs and the rankings list: list, cancel. Logic in ``app.services.jobs``."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Path, Query

from app.api.deps import get_ctx, require
from app.services import jobs as jobs_svc

router = APIRouter(prefix="/v1", dependencies=[Depends(require())])

ID = Path(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="a job id")
ERRORS = {404: {"description": "no such job"}, 409: {"description": "the job has already finished"},
          422: {"description": "invalid parameter"}}


@router.get("/jobs", tags=["jobs"], responses={422: ERRORS[422]})
def list_jobs(status: Literal["queued", "running", "done", "failed", "cancelled"] | None = None,
              limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=10_000_000),
              ctx=Depends(get_ctx)):
    """Jobs, newest first; ``status`` filters."""
    return {"jobs": ctx.jobs.list(status, limit, offset), "limit": limit, "offset": offset}


@router.delete("/jobs/{job_id}", tags=["jobs"], responses=ERRORS)
def cancel_job(job_id: str = ID, ctx=Depends(get_ctx)):
    """Cancel a queued or running job: its status turns ``cancelled`` and its computation stops."""
    return ctx.jobs.cancel(job_id)


@router.get("/rankings", tags=["rankings"], responses={422: ERRORS[422]})
def list_rankings(target: str | None = Query(None, max_length=64),
                  limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=10_000_000),
                  ctx=Depends(get_ctx)):
    """Rankings, newest first (summaries without the ranking itself); ``target`` filters by dataset id."""
    return {"rankings": jobs_svc.list_rankings(ctx, target, limit, offset), "limit": limit, "offset": offset}
