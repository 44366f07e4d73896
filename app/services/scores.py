"""The score cache. A score is identified by (source, target sha256, encoder, estimator,
params hash, version); ``version`` is the estimators package version, so upgrading the code
invalidates old scores instead of silently mixing them. The params hash is that of the
parameters that actually produced the value (a fallback's included: ``estimators.ranking``'s
fallback settings are hashed and stored with the value, never under the default's hash), so a
lookup finds exactly the value those parameters give."""
from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import Score, iso

if TYPE_CHECKING:
    from app.services.context import Context


def version() -> str:
    import estimators

    return str(getattr(estimators, "__version__", "0"))


def params_hash(params: dict[str, Any] | None) -> str:
    blob = json.dumps(params or {}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def key(source: str, target_sha256: str, encoder: str, estimator: str, ph: str, ver: str) -> tuple[str, ...]:
    return (source, target_sha256, encoder, estimator, ph, ver)


def lookup_target(session: Session, target_sha256: str, estimators_: list[str],
                  ver: str) -> dict[tuple[str, ...], Score]:
    rows = session.scalars(select(Score).where(Score.target_sha256 == target_sha256,
                                               Score.estimator.in_(estimators_), Score.version == ver))
    return {key(r.source, r.target_sha256, r.encoder, r.estimator, r.params_hash, r.version): r for r in rows}


def store_many(ctx: Context, rows: list[dict[str, Any]]) -> int:
    """Insert score rows; a row that already exists (concurrent request) is skipped. Returns inserted."""
    if not rows:
        return 0
    inserted = 0
    try:
        with ctx.Session.begin() as s:  # one executemany (Core): a chunk of thousands of rows in milliseconds
            s.execute(insert(Score), rows)
        return len(rows)
    except IntegrityError:
        pass
    for r in rows:  # slow path: one by one, skipping duplicates
        try:
            with ctx.Session.begin() as s:
                s.add(Score(**r))
            inserted += 1
        except IntegrityError:
            continue
    return inserted


def score_dict(r: Score) -> dict[str, Any]:
    return {"source": r.source, "source_kind": r.source_kind, "target_sha256": r.target_sha256,
            "encoder": r.encoder, "estimator": r.estimator, "value": r.value, "n": r.n,
            "version": r.version, "params": r.params or {},
            "created_at": iso(r.created_at)}
