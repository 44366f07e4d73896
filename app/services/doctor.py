"""Consistency check and garbage collection of a data dir + database (``transferrank doctor``).

Finds, and with ``repair=True`` fixes:

- ``.tmp-*`` files left by interrupted blob writes (older than ``min_age_seconds``);
- orphan blobs: files in the blob store that no SQL row references (a crash between the blob
  write and the SQL commit), older than ``min_age_seconds`` so a write in flight in another
  process is never touched. References are collected from every ``*blob*`` column of every
  table (strings, and JSON objects / lists of keys), so a new blob column is covered by naming it so;
- missing blobs: referenced keys without a file (reported; the rows are not deleted, since
  that would lose data a backup may restore);
- stale jobs: unfinished jobs without a heartbeat (reaped as at start);
- orphan scores: cached scores whose target content no dataset has any more;
- with ``esm_forms`` (the CLI): ESMs stored without their canonical form (data dirs written
  before it existed; ``app.services.sources.add_canonical_forms`` re-stores them with it).

It runs at start with ``repair=True`` (``Context.open``) and from the CLI:
``transferrank doctor [--repair] [--data-dir DIR]``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, String, Text, delete, select
from sqlalchemy.orm import Session

from app.core.logging import get_logger
from app.db.models import Base, Dataset, Score
from app.db.session import rowcount

if TYPE_CHECKING:
    from app.services.context import Context

log = get_logger("doctor")

_KEY = re.compile(r"^[0-9a-f]{64}\.[a-z0-9]{1,16}$")
MIN_AGE_SECONDS = 3600.0


def _keys_in(value: object, out: set[str]) -> None:
    if isinstance(value, str):
        if _KEY.match(value):
            out.add(value)
    elif isinstance(value, dict):
        for v in value.values():
            _keys_in(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _keys_in(v, out)


def referenced_blobs(session: Session) -> set[str]:
    """Every blob key any ``*blob*`` column of any table holds."""
    keys: set[str] = set()
    for table in Base.metadata.sorted_tables:
        cols = [c for c in table.columns if "blob" in c.name.lower() and isinstance(c.type, (String, Text, JSON))]
        if not cols:
            continue
        for row in session.execute(select(*cols)):
            for v in row:
                _keys_in(v, keys)
    return keys


def check(ctx: Context, repair: bool = False, min_age_seconds: float = MIN_AGE_SECONDS,
          esm_forms: bool = False) -> dict[str, Any]:
    """Report (and with ``repair``, fix) the problems listed in the module docstring. ``esm_forms``
    also checks every stored ESM file for its canonical form (reads each file's header: left out
    of the check at start)."""
    blobs = ctx.blobs
    temps = blobs.temp_files(min_age_seconds)
    with ctx.Session() as s:
        referenced = referenced_blobs(s)
        shas = set(s.scalars(select(Dataset.sha256)))
        orphan_scores = s.scalar(select(Score.id).where(Score.target_sha256.not_in(shas)).limit(1)) is not None \
            if shas else s.scalar(select(Score.id).limit(1)) is not None
    garbage = blobs.garbage(referenced, min_age_seconds)
    missing = sorted(k for k in referenced if not blobs.exists(k))
    report = {"temp_files": len(temps), "orphan_blobs": len(garbage),
              "orphan_blob_bytes": sum(_size(blobs.path(k)) for k in garbage),
              "missing_blobs": missing[:20], "n_missing_blobs": len(missing),
              "orphan_scores": 0, "stale_jobs": 0, "repaired": repair}
    if orphan_scores:
        with ctx.Session.begin() as s:
            q = delete(Score).where(Score.target_sha256.not_in(select(Dataset.sha256)))
            if repair:
                report["orphan_scores"] = rowcount(s.execute(q))
            else:
                from sqlalchemy import func

                report["orphan_scores"] = s.scalar(select(func.count()).select_from(Score).where(
                    Score.target_sha256.not_in(select(Dataset.sha256))))
    if repair:
        for p in temps:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        with ctx.Session() as s:  # re-read: a row may have started referencing one meanwhile
            still = referenced_blobs(s)
        report["orphan_blobs_removed"] = sum(1 for k in garbage if k not in still and blobs.delete(k))
        report["stale_jobs"] = ctx.jobs.reap()
        blobs.restore_reserve()
    if esm_forms:
        from app.services.sources import add_canonical_forms

        report.update(add_canonical_forms(ctx, repair=repair))
    if any(report[k] for k in ("temp_files", "orphan_blobs", "n_missing_blobs", "orphan_scores", "stale_jobs")):
        log.warning("doctor: %s", {k: v for k, v in report.items() if k != "missing_blobs"})
    return report


def _size(path: Path) -> int:
    try:
        return int(path.stat().st_size)
    except FileNotFoundError:
        return 0
