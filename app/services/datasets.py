"""Datasets: parse uploads (CSV / JSONL / Parquet text+label, NPZ features+labels), dedupe by
content hash, store arrays as blobs and the row in SQL — all or nothing."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.errors import Conflict, Invalid, NotFound
from app.core.logging import get_logger
from app.db.models import DEFAULT_OWNER, Dataset, FeatureSet, Feedback, Ranking, Score, SourceTask, iso
from app.db.session import rowcount
from app.services import ingest
from app.services.tenancy import check_read, check_write

if TYPE_CHECKING:
    from app.core.config import Settings
    from app.services.context import Context

log = get_logger("datasets")

TEXT_FORMATS = ingest.TEXT_FORMATS
NPZ_KEY_PREFIXES = ingest.NPZ_KEY_PREFIXES
SEP = " [SEP] "


# ---------------------------------------------------------------------- parsing
# The bounded readers live in app.services.ingest; these names stay importable from here.
Parsed = ingest.Parsed


def parse_upload(data: bytes, filename: str | None, settings: Settings, task_type: str | None = None) -> Parsed:
    """``ingest.parse_upload``, plus image uploads (``app.services.images``) and target types
    (``app.services.targets``: regression / multilabel, and ambiguous labels refused)."""
    from app.services import images, targets

    task_type = targets.check_task_type(task_type)
    if not data or len(data) > settings.max_upload_bytes:
        return ingest.parse_upload(data, filename, settings)  # the size errors
    if images.is_zip(data, filename):
        return images.parse_zip(data, settings, task_type)
    if images.parquet_has_image(data):
        return images.parse_parquet(data, settings, task_type)
    fmt = ingest.detect_format(data, filename)
    if fmt == "npz":
        return targets.parse_npz(data, settings, task_type, lambda d, s: ingest.parse_upload(d, "upload.npz", s))
    return targets.parse_table(data, fmt, settings, task_type,
                               lambda d, f, s: ingest.parse_upload(d, filename, s))
_labels = ingest._labels
_check_rows = ingest.check_rows


def check_name(name: str | None, what: str = "name") -> str | None:
    """A user-given name: at most 255 characters, no control characters (PostgreSQL refuses NUL)."""
    if name is None:
        return None
    if any(ch in ingest.CONTROL for ch in name):
        raise Invalid(f"the {what} contains a control character (such as NUL or a newline); use printable text")
    if len(name) > 255:
        raise Invalid(f"the {what} has {len(name)} characters, over the limit of 255")
    return name


# ---------------------------------------------------------------------- storage
def dataset_dict(ds: Dataset) -> dict[str, Any]:
    return {
        "id": ds.id,
        "name": ds.name,
        "owner": ds.owner,
        "sha256": ds.sha256,
        "n_examples": ds.n_examples,
        "n_classes": ds.n_classes,
        "kind": ds.kind,
        "task_type": ds.task_type or "classification",
        "modality": ds.modality or ("features" if ds.kind == "features" else "text"),
        "classes": list(ds.label_names or [])[:50],
        "format": (ds.meta or {}).get("format"),
        "feature_sets": sorted({fs.encoder for fs in ds.feature_sets}) if ds.feature_sets is not None else [],
        "created_at": iso(ds.created_at),
    }


def _default_name(filename: str | None, sha: str) -> str:
    stem = Path((filename or "").replace("\\", "/")).stem  # a path-like name keeps its last part only
    stem = "".join(ch for ch in stem if ch not in ingest.CONTROL).strip()
    return stem[:200] if stem else f"dataset-{sha[:8]}"


def store_parsed(ctx: Context, parsed: Parsed, name: str | None, filename: str | None = None,
                 meta: dict[str, Any] | None = None, *, owner: str = DEFAULT_OWNER) -> tuple[Dataset, bool]:
    """Write blobs, then the SQL row in one transaction; on any failure remove the new blobs.

    Returns ``(dataset, created)``; ``created`` is False when ``owner`` already stores the same
    content. Another owner's copy is never returned (its name and id stay private); only its
    content-derived task embedding is reused.
    """
    sha = parsed.sha256()
    with ctx.Session() as s:
        existing = s.scalar(select(Dataset).where(Dataset.owner == owner, Dataset.sha256 == sha))
        if existing is not None:
            _ = existing.feature_sets
            return existing, False
        task_embedding = s.scalar(select(Dataset.task_embedding_blob).where(
            Dataset.sha256 == sha, Dataset.task_embedding_blob.is_not(None)).limit(1))
    with ctx.blobs.writer() as w:
        texts_blob = None
        if parsed.kind == "text":
            texts = parsed.texts if parsed.text_pairs is None else [
                f"{a}{SEP}{b}" for a, b in zip(parsed.texts or [], parsed.text_pairs)]
            texts_blob = w.put_json(texts)
        labels_blob = w.put_array(parsed.labels)
        features_blob = w.put_array(parsed.features) if parsed.features is not None else None
        extra = {k: w.put_array(v) for k, v in parsed.extras.items()}
        ds = Dataset(
            owner=owner, task_embedding_blob=task_embedding,
            name=(name or "").strip()[:255] or _default_name(filename, sha), sha256=sha, kind=parsed.kind,
            n_examples=parsed.n, n_classes=parsed.n_classes, label_names=parsed.label_names,
            texts_blob=texts_blob, labels_blob=labels_blob, features_blob=features_blob, extra_blobs=extra,
            meta={"format": parsed.fmt, "columns": parsed.columns,
                  "text_pair": parsed.text_pairs is not None,
                  "dim": int(parsed.features.shape[1]) if parsed.features is not None else None,
                  **(meta or {})},
            task_type=getattr(parsed, "task_type", "classification"),
            modality=getattr(parsed, "modality", "features" if parsed.kind == "features" else "text"),
        )
        try:
            with ctx.Session.begin() as s:
                s.add(ds)
        except IntegrityError:  # the same content was stored concurrently: keep theirs
            w.keep_all()  # blobs are shared by content with the winner
            with ctx.Session() as s:
                existing = s.scalar(select(Dataset).where(Dataset.owner == owner, Dataset.sha256 == sha))
                if existing is None:
                    raise Conflict("the same content was being stored and deleted concurrently; "
                                   "repeat the upload") from None
                _ = existing.feature_sets
            w.restore_missing()
            return existing, False
        w.restore_missing()  # a concurrent deletion of the same content may have collected shared blobs
    with ctx.Session() as s:
        stored = s.get(Dataset, ds.id)
        assert stored is not None  # committed just above
        ds = stored
        _ = ds.feature_sets
    log.info("dataset %s stored (%s, n=%d, C=%d, sha256=%s)", ds.id, ds.kind, ds.n_examples, ds.n_classes, sha[:12])
    return ds, True


def create_from_upload(ctx: Context, data: bytes, filename: str | None, name: str | None, *,
                       owner: str = DEFAULT_OWNER, task_type: str | None = None) -> tuple[Dataset, bool]:
    check_name(name)
    parsed = parse_upload(data, filename, ctx.settings, task_type)
    return store_parsed(ctx, parsed, name, filename, owner=owner)


def get(ctx: Context, dataset_id: str, owner: str | None = None) -> Dataset:
    """The dataset, if ``owner`` may read it (its own or public); ``owner=None``: internal, any."""
    with ctx.Session() as s:
        ds = check_read(s.get(Dataset, dataset_id), owner,
                        f"no dataset with id {dataset_id!r}; list them with GET /v1/datasets")
        _ = ds.feature_sets
        return ds


def list_all(ctx: Context, limit: int = 100, offset: int = 0, owner: str | None = None) -> list[Dataset]:
    """``owner``'s datasets, newest first (public ones are reached through the sources)."""
    with ctx.Session() as s:
        q = select(Dataset)
        if owner is not None:
            q = q.where(Dataset.owner == owner)
        rows = list(s.scalars(q.order_by(Dataset.created_at.desc(), Dataset.id).limit(limit).offset(offset)))
        for r in rows:
            _ = r.feature_sets
        return rows


def labels(ctx: Context, ds: Dataset) -> np.ndarray:
    return ctx.blobs.get_array(ds.labels_blob)


def texts(ctx: Context, ds: Dataset) -> list[str]:
    if ds.texts_blob is None:
        raise Invalid(f"dataset {ds.id} ({ds.name}) holds features, not texts")
    stored: list[str] = ctx.blobs.get_json(ds.texts_blob)
    return stored


def referenced_blobs(session: Session) -> set[str]:
    """Every blob key a SQL row references (all ``*blob*`` columns, see ``app.services.doctor``)."""
    from app.services.doctor import referenced_blobs as all_referenced

    return all_referenced(session)


def _lock_dataset(session: Session, dataset_id: str) -> Dataset | None:
    """The dataset row, locked until the transaction ends (PostgreSQL ``FOR UPDATE``; on SQLite a
    no-op update takes the write lock before the read)."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(Dataset).where(Dataset.id == dataset_id).values(id=Dataset.id))
    found: Dataset | None = session.scalar(select(Dataset).where(Dataset.id == dataset_id).with_for_update())
    return found


def store_scores(ctx: Context, dataset_id: str, rows: list[dict[str, Any]]) -> int:
    """Insert cached scores of target ``dataset_id`` unless the dataset was deleted meanwhile.

    The rows go in first, then the dataset row is locked and checked in the same transaction,
    so a concurrent ``delete_dataset`` either sees (and removes) them or makes this one roll
    back with ``NotFound``: no score outlives its target. A row that already exists
    (concurrent request) is skipped. Returns the number inserted."""
    if not rows:
        return 0
    gone = NotFound(f"dataset {dataset_id!r} was deleted while it was being ranked")

    def insert(batch: list[dict[str, Any]]) -> None:
        with ctx.Session.begin() as s:
            s.add_all([Score(**r) for r in batch])
            s.flush()
            if _lock_dataset(s, dataset_id) is None:
                raise gone

    try:
        insert(rows)
        return len(rows)
    except IntegrityError:
        pass
    inserted = 0
    for r in rows:  # slow path: one by one, skipping duplicates
        try:
            insert([r])
            inserted += 1
        except IntegrityError:
            continue
    return inserted


def _disk_full(exc: BaseException) -> bool:
    from app.storage.blobs import is_disk_full

    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).lower()
    return is_disk_full(exc) or (isinstance(orig, BaseException) and is_disk_full(orig)) \
        or ("disk" in text and "full" in text)


def delete_dataset(ctx: Context, dataset_id: str, owner: str | None = None, admin: bool = False) -> dict[str, Any]:
    """Delete a dataset with its rankings and feedback, in one transaction that also cancels its
    unfinished ranking jobs (their computations stop at the next progress report and can no longer
    store scores for it). Cached scores and features of its content stay while another owner
    stores the same content (they are keyed by content, not by row).

    On a full disk (the database cannot journal the deletion) the blob store's reserve file is
    freed and the deletion retried once, so space can always be freed through the API."""
    try:
        return _delete_dataset(ctx, dataset_id, owner, admin)
    except Exception as exc:
        if not _disk_full(exc) or not ctx.blobs.release_reserve():
            raise
        log.warning("disk full while deleting dataset %s: reserve released, retrying", dataset_id)
        out = _delete_dataset(ctx, dataset_id, owner, admin)
        ctx.blobs.restore_reserve()
        return out


def _delete_dataset(ctx: Context, dataset_id: str, owner: str | None, admin: bool) -> dict[str, Any]:
    with ctx.Session.begin() as s:
        ds = check_write(_lock_dataset(s, dataset_id), owner, admin, f"no dataset with id {dataset_id!r}",
                         f"dataset {dataset_id}")
        cancelled = ctx.jobs.cancel_for_dataset(s, dataset_id)
        src = s.scalar(select(SourceTask).where(SourceTask.dataset_id == dataset_id))
        if src is not None:
            raise Conflict(f"dataset {dataset_id} backs source task {src.name!r}; delete the source first "
                           f"(DELETE /v1/sources/{src.name})")
        keys = {k for k in (ds.texts_blob, ds.labels_blob, ds.features_blob, ds.task_embedding_blob) if k}
        keys.update((ds.extra_blobs or {}).values())
        twin = s.scalar(select(Dataset.id).where(Dataset.sha256 == ds.sha256, Dataset.id != ds.id).limit(1))
        if twin is None:
            keys.update(fs.blob for fs in ds.feature_sets)
            n_scores = rowcount(s.execute(delete(Score).where(Score.target_sha256 == ds.sha256)))
        else:  # another row stores the same content: its feature and score caches stay
            n_scores = 0
            s.execute(update(FeatureSet).where(FeatureSet.dataset_id == dataset_id).values(dataset_id=twin)
                      .execution_options(synchronize_session=False))
            s.expire(ds, ["feature_sets"])
        s.execute(delete(Feedback).where(Feedback.target_id == dataset_id))
        s.execute(delete(Ranking).where(Ranking.target_id == dataset_id))
        s.delete(ds)
    with ctx.Session() as s:
        still = referenced_blobs(s)
    removed = [k for k in keys if k not in still and ctx.blobs.delete(k)]
    log.info("dataset %s deleted (%d blobs, %d cached scores, %d job(s) cancelled)", dataset_id, len(removed),
             n_scores, len(cancelled))
    return {"id": dataset_id, "deleted": True, "blobs_removed": len(removed), "scores_removed": n_scores,
            "jobs_cancelled": len(cancelled)}
