"""Batch rankings: several targets ranked in one request by one job.

Each target gets its own ranking row (``GET /v1/rankings/{id}`` as usual), all pointing at the
same job; the job ranks them one after the other through ``rankings.compute`` (the score cache
and the combination are the single-ranking ones) and reports progress over the whole batch. A
target that fails marks its own ranking failed and the batch goes on.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from app.core.errors import Invalid, ServiceError
from app.db.models import DEFAULT_OWNER, Ranking, utcnow
from app.services import rankings as rankings_svc

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.services.context import Context

MAX_TARGETS = 100


def create(ctx: Context, spec: rankings_svc.RankingSpec, targets: list[str]) -> dict[str, Any]:
    """Validate every target up front (404/422 before anything is queued), then queue one job."""
    targets = list(dict.fromkeys(targets))
    if not targets:
        raise Invalid("targets must name at least one dataset id")
    if len(targets) > MAX_TARGETS:
        raise Invalid(f"at most {MAX_TARGETS} targets per batch, got {len(targets)}")
    specs = [replace(spec, target=t) for t in targets]
    for s_ in specs:
        rankings_svc._validate(ctx, s_)  # raises NotFound / Invalid with the single ranking's messages
    with ctx.Session.begin() as s:
        owner = spec.owner or DEFAULT_OWNER
        job = ctx.jobs.create(s, "ranking_batch", message=f"queued: {spec.candidates} rankings of {len(specs)} targets",
                              owner=owner)
        rows = [Ranking(owner=owner, target_id=x.target, candidates=x.candidates, request=x.as_dict(),
                        status="queued", job_id=job.id) for x in specs]
        s.add_all(rows)
        s.flush()
        ids, job_id = [r.id for r in rows], job.id

    def run(progress: Callable[..., None]) -> dict[str, Any]:
        n, failed = len(specs), list[str]()
        for i, (rid, x) in enumerate(zip(ids, specs)):
            with ctx.Session.begin() as s:
                row = s.get(Ranking, rid)
                if row is None:  # deleted meanwhile
                    failed.append(rid)
                    continue
                row.status = "running"

            def part(p: float, message: str | None = None, i: int = i) -> None:
                progress((i + min(max(float(p), 0.0), 1.0)) / n,
                         f"target {i + 1}/{n}" + (f": {message}" if message else ""))

            try:
                result = rankings_svc.compute(ctx, x, part)
            except (ServiceError, ValueError) as exc:
                rankings_svc._fail(ctx, rid, str(getattr(exc, "detail", exc)))
                failed.append(rid)
                continue
            rankings_svc._finish(ctx, rid, result)
        return {"rankings": ids, "failed": failed}

    def on_error(err: str) -> None:  # the job died (crash, cancel): every ranking not finished fails with it
        with ctx.Session.begin() as s:
            for rid in ids:
                r = s.get(Ranking, rid)
                if r is not None and r.status in ("queued", "running"):
                    r.status, r.error, r.finished_at = "failed", err, utcnow()

    ctx.jobs.submit(job_id, run, on_error)
    return {"id": job_id, "status": "queued", "job": job_id, "progress": 0.0,
            "rankings": [{"id": rid, "target": x.target, "status": "queued"} for rid, x in zip(ids, specs)]}
