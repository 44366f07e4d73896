"""Rank a dataset file's bytes without a server: store the dataset, run the ranking, return it.

The one path behind ``transferrank rank`` and ``TransferSelector(server=None)``: the same
parsing, score cache and combination as the REST service (``datasets.create_from_upload`` +
``rankings.create``). With ``progress`` the ranking runs as a job on the context's pool and its
progress is reported as ``progress(fraction, message)``; without it, in the caller's thread.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app.core.errors import Invalid
from app.db.models import DEFAULT_OWNER
from app.services import datasets as datasets_svc
from app.services import rankings as rankings_svc

if TYPE_CHECKING:
    from app.db.models import Dataset
    from app.services.context import Context


class RankingFailed(Invalid):
    """The dataset was stored but its ranking ended as failed (the job's error text)."""


def rank_bytes(ctx: Context, data: bytes, filename: str, *, candidates: str, estimators: list[str] | None = None,
               top_k: int = 10, prefilter_k: int | None = None, sources: list[str] | None = None,
               name: str | None = None, progress: Callable[[float, str | None], None] | None = None,
               poll: float = 0.1, owner: str = DEFAULT_OWNER, bootstrap: int | None = None,
               task_type: str | None = None
               ) -> tuple[Dataset, bool, dict[str, Any]]:
    """Returns ``(dataset row, created, ranking dict as GET /v1/rankings/{id})``, stored for
    ``owner`` (default: what open mode's REST caller sees); raises
    ``ServiceError`` (bad file, unknown estimator, ...) or ``RankingFailed`` when the ranking itself failed."""
    ds, created = datasets_svc.create_from_upload(ctx, data, filename, name, owner=owner, task_type=task_type)
    spec = rankings_svc.RankingSpec(target=ds.id, candidates=candidates, estimators=estimators, top_k=top_k,
                                    prefilter_k=prefilter_k, sources=sources, owner=owner)
    if bootstrap is not None:
        spec.bootstrap = bootstrap
    if progress is None:
        out, _ = rankings_svc.create(ctx, spec, inline=True)
    else:
        out, done = rankings_svc.create(ctx, spec)
        if not done:
            while True:
                job = ctx.jobs.get(out["job"])
                progress(job["progress"], job.get("message"))
                if job["status"] not in ("queued", "running"):
                    break
                time.sleep(poll)
            out = rankings_svc.get(ctx, out["id"])
        progress(1.0, "done")
    if out.get("status") != "done":
        raise RankingFailed(out.get("error") or "the ranking failed")
    return ds, created, out
