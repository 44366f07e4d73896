"""Observed transfer results: "source S fine-tuned on target T reached metric M = v"."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from app.core.errors import Invalid, NotFound
from app.db.models import DEFAULT_OWNER, EncoderRow, Feedback, SourceTask, iso
from app.services import datasets as datasets_svc
from app.services.tenancy import visible

if TYPE_CHECKING:
    from app.services.context import Context


def feedback_dict(f: Feedback) -> dict[str, Any]:
    return {"id": f.id, "source": f.source, "target": f.target_id, "target_sha256": f.target_sha256,
            "metric": f.metric, "value": f.value, "higher_is_better": f.higher_is_better, "note": f.note,
            "created_at": iso(f.created_at)}


def create(ctx: Context, source: str, target: str, metric: str, value: float, higher_is_better: bool = True,
           note: str | None = None, *, owner: str = DEFAULT_OWNER) -> dict[str, Any]:
    """Record ``owner``'s observation on a dataset and a source it may read (its own or public)."""
    if not math.isfinite(value):
        raise Invalid("value must be a finite number")
    if not metric.strip():
        raise Invalid("metric must be a non-empty name such as 'accuracy'")
    ds = datasets_svc.get(ctx, target, owner)
    with ctx.Session() as s:
        known = s.scalar(select(SourceTask.id).where(SourceTask.name == source,
                                                     visible(SourceTask.owner, owner))) is not None \
            or s.scalar(select(EncoderRow.name).where(EncoderRow.name == source,
                                                      visible(EncoderRow.owner, owner))) is not None
    if not known:
        raise NotFound(f"no source task or model named {source!r}; list them with GET /v1/sources")
    with ctx.Session.begin() as s:
        f = Feedback(owner=owner, source=source, target_id=ds.id, target_sha256=ds.sha256, metric=metric.strip(),
                     value=float(value), higher_is_better=higher_is_better, note=note)
        s.add(f)
    return feedback_dict(f)


def list_all(ctx: Context, target: str | None = None, source: str | None = None,
             owner: str | None = None) -> list[dict[str, Any]]:
    """``owner``'s feedback (None: everyone's)."""
    with ctx.Session() as s:
        q = select(Feedback).order_by(Feedback.id)
        if owner is not None:
            q = q.where(Feedback.owner == owner)
        if target:
            q = q.where(Feedback.target_id == target)
        if source:
            q = q.where(Feedback.source == source)
        return [feedback_dict(f) for f in s.scalars(q)]
