"""The source catalogue: source tasks (datasets with base embeddings, an optional ESM and a
FAISS entry) and models (the encoders table). Registering a source queues an ESM training job on
the worker backend; the service then writes the ESM blob, the base embeddings and the index."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.errors import Conflict, Invalid, NotFound
from app.core.logging import get_logger
from app.core.progress import ProgressFn
from app.core.status import SourceStatus
from app.db.models import DEFAULT_OWNER, Dataset, EncoderRow, Score, SourceTask, iso
from app.db.session import rowcount
from app.services import datasets as datasets_svc
from app.services import features as features_svc
from app.services.tenancy import check_read, check_write, visible
from app.storage.blobs import BlobWriter
from app.training.config import TRAIN_FIELDS

if TYPE_CHECKING:
    from app.services.context import Context
    from estimators.esm import EmbeddingSpaceMap

log = get_logger("sources")

TRAIN_KEYS = set(TRAIN_FIELDS)  # app.training.config.EsmTrainConfig


def source_dict(t: SourceTask, d: Dataset | None = None) -> dict[str, Any]:
    out = {"id": t.id, "name": t.name, "kind": "task", "owner": t.owner, "dataset_id": t.dataset_id,
           "description": t.description,
           "licence": t.licence, "origin": t.origin, "status": t.status, "base_encoder": t.base_encoder,
           "has_esm": t.esm_blob is not None, "esm": t.esm_meta or {}, "job": t.job_id, "error": t.error,
           "created_at": iso(t.created_at)}
    if d is not None:
        out.update(n_examples=d.n_examples, n_classes=d.n_classes, sha256=d.sha256)
    return out


def model_dict(e: EncoderRow) -> dict[str, Any]:
    return {"name": e.name, "kind": "model", "owner": e.owner, "encoder_kind": e.kind, "dim": e.dim,
            "params": e.params,
            "licence": e.licence, "enabled": e.enabled}


def list_sources(ctx: Context, owner: str | None = None) -> dict[str, Any]:
    """The catalogue ``owner`` sees: its own sources and models and the public ones."""
    with ctx.Session() as s:
        tasks = [source_dict(t, d) for t, d in s.execute(
            select(SourceTask, Dataset).join(Dataset, Dataset.id == SourceTask.dataset_id)
            .where(visible(SourceTask.owner, owner)).order_by(SourceTask.name))]
        models = [model_dict(e) for e in s.scalars(select(EncoderRow).where(visible(EncoderRow.owner, owner))
                                                     .order_by(EncoderRow.name))]
    return {"tasks": tasks, "models": models, "base_encoder": ctx.settings.base_encoder}


def get_source(ctx: Context, name: str, owner: str | None = None) -> dict[str, Any]:
    with ctx.Session() as s:
        row = s.execute(select(SourceTask, Dataset).join(Dataset, Dataset.id == SourceTask.dataset_id)
                        .where(SourceTask.name == name)).first()
        task = check_read(row[0] if row else None, owner,
                          f"no source task named {name!r}; list them with GET /v1/sources")
        return source_dict(task, row[1] if row else None)


def hidden_names(ctx: Context, owner: str | None) -> set[str]:
    """Names of the source tasks and models of other owners (their scores stay hidden from ``owner``)."""
    if owner is None:
        return set()
    with ctx.Session() as s:
        names = set(s.scalars(select(SourceTask.name).where(~visible(SourceTask.owner, owner))))
        names.update(s.scalars(select(EncoderRow.name).where(~visible(EncoderRow.owner, owner))))
    return names


def sync_encoders(ctx: Context) -> None:
    """Mirror the encoder registry's catalogue into the ``encoders`` table (idempotent)."""
    from app.encoders.registry import catalogue

    with ctx.Session.begin() as s:
        for spec in catalogue():
            row = s.get(EncoderRow, spec.name)
            if row is None:
                s.add(EncoderRow(name=spec.name, kind=spec.kind, path=spec.path or "", dim=spec.dim,
                                 params=spec.params, licence=spec.licence or "", enabled=True))
            else:
                row.kind, row.path, row.dim, row.params, row.licence = (
                    spec.kind, spec.path or "", spec.dim, spec.params, spec.licence or "")


def _row(s: Session, source_id: int) -> SourceTask:
    """The source's row; ``NotFound`` when it was deleted meanwhile."""
    row = s.get(SourceTask, source_id)
    if row is None:
        raise NotFound(f"source {source_id} was deleted")
    return row


def _store_esm(ctx: Context, writer: BlobWriter, weight: ArrayLike, bias: ArrayLike, metadata: dict[str, Any]) -> str:
    from estimators.esm import EmbeddingSpaceMap

    esm = EmbeddingSpaceMap(np.asarray(weight), np.asarray(bias),
                            metadata={k: v for k, v in metadata.items() if v is not None})
    with tempfile.TemporaryDirectory() as tmp:
        # with its canonical (triangular) form: tasks rankings score it a third faster
        path = esm.save(Path(tmp) / "esm.safetensors", dtype="float32", canonical=True)
        return writer.put_file(path, "safetensors")


def _without_canonical_form(path: Path) -> bool:
    """True for a stored ESM file that could have a canonical form (d_out >= d_in) but has none
    (written before ESMs were stored with it)."""
    from safetensors import SafetensorError, safe_open

    from estimators.esm_stats import CANONICAL_LOWER

    try:
        with safe_open(str(path), framework="numpy") as f:
            keys = set(f.keys())
            shape = f.get_slice("weight").get_shape() if "weight" in keys else None
    except (SafetensorError, OSError):  # missing or unreadable: the doctor reports missing blobs
        return False
    return shape is not None and CANONICAL_LOWER not in keys and len(shape) == 2 and shape[0] >= shape[1] >= 2


def add_canonical_forms(ctx: Context, repair: bool = True) -> dict[str, int]:
    """ESMs stored without their canonical form (``estimators.esm_stats.canonical_maps``; data
    dirs from before it) counted and, with ``repair``, re-stored with it: the same map (and
    metadata) plus the canonical tensors, a new blob; the source row then points at it and the
    old blob is removed once nothing references it. Tasks rankings score such sources the
    general way (same values, a third more per-source work) until then."""
    from estimators.esm import EmbeddingSpaceMap

    with ctx.Session() as s:
        rows = s.execute(select(SourceTask.id, SourceTask.esm_blob).where(SourceTask.esm_blob.is_not(None))).all()
    todo = [(int(sid), str(key)) for sid, key in rows if key and _without_canonical_form(ctx.blobs.path(key))]
    out = {"esms_without_canonical_form": len(todo), "esms_given_canonical_form": 0}
    if not repair:
        return out
    for sid, old in todo:
        esm = EmbeddingSpaceMap.load(ctx.blobs.path(old))
        weight, bias = esm._require_fitted()
        meta = {k: v for k, v in esm.metadata.items()
                if k not in ("format", "format_version", "dim_in", "dim_out", "stored_dtype")}
        with ctx.blobs.writer() as w:
            key = _store_esm(ctx, w, weight, bias, meta)
            with ctx.Session.begin() as s:
                t = s.get(SourceTask, sid)
                if t is None or t.esm_blob != old:  # deleted or replaced meanwhile: leave it
                    continue
                t.esm_blob = key
        with ctx.Session() as s:
            still = s.scalar(select(SourceTask.id).where(SourceTask.esm_blob == old).limit(1))
        if still is None:
            ctx.blobs.delete(old)
        out["esms_given_canonical_form"] += 1
    return out


def _activate(ctx: Context, source_id: int) -> None:
    """Index a source whose base embeddings exist (the task embedding is on its dataset row)."""
    with ctx.Session() as s:
        t = _row(s, source_id)
        key = s.scalar(select(Dataset.task_embedding_blob).where(Dataset.id == t.dataset_id))
    if key is not None:
        ctx.index.add(source_id, ctx.blobs.get_array(key))


def register(ctx: Context, dataset_id: str, name: str | None = None, description: str = "", licence: str = "",
             train_esm: bool = True, train: dict[str, Any] | None = None, origin: str = "user", *,
             owner: str = DEFAULT_OWNER, admin: bool = False) -> tuple[dict[str, Any], bool]:
    """Register a source task owned by the dataset's owner. Returns ``(source, queued)``: queued ->
    a job trains/embeds it. ``owner`` must be allowed to change the dataset (public: admin only)."""
    with ctx.Session() as s:
        check_write(s.get(Dataset, dataset_id), owner, admin,
                    f"no dataset with id {dataset_id!r}; list them with GET /v1/datasets", f"dataset {dataset_id}")
    ds = datasets_svc.get(ctx, dataset_id)
    owner = ds.owner
    name = (name or ds.name).strip()
    if not name:
        raise Invalid("a source needs a non-empty name")
    train = dict(train or {})
    bad = set(train) - TRAIN_KEYS
    if bad:
        raise Invalid(f"unknown training option(s) {', '.join(sorted(bad))}; allowed: {', '.join(sorted(TRAIN_KEYS))}")
    if ds.kind in ("image", "esm"):
        raise Invalid(f"dataset {ds.id} is {'an image dataset' if ds.kind == 'image' else 'an imported ESM'}: "
                      "source tasks are text datasets (or NPZ base-encoder features)")
    if train_esm and (ds.task_type or "classification") != "classification":
        raise Invalid(f"ESM training fine-tunes a classifier; dataset {ds.id} is a {ds.task_type} target. "
                      "Register it with train_esm=false (base embeddings only)")
    base = ctx.settings.base_encoder
    with ctx.Session.begin() as s:
        for t in s.scalars(select(SourceTask).where((SourceTask.name == name) | (SourceTask.dataset_id == ds.id))):
            if t.status == SourceStatus.FAILED and t.owner == owner:
                # a failed registration is retried by repeating the request
                s.execute(delete(Score).where(Score.source == t.name, Score.source_kind == "task"))
                s.delete(t)
                s.flush()
                ctx.index.remove(t.id)
            elif t.name == name:
                raise Conflict(f"a source task named {name!r} already exists; choose another name")
            else:
                raise Conflict(f"dataset {ds.id} is already registered as a source")
        base_row = s.get(EncoderRow, base)
    if ds.kind == "features":
        dim = (ds.meta or {}).get("dim")
        if base_row is None or dim != base_row.dim:
            raise Invalid(f"an NPZ source must carry base-encoder features ({base}, dim "
                          f"{base_row.dim if base_row else '?'}); this one has dim {dim}. Upload the texts instead")
        if train_esm and train:
            raise Invalid("an NPZ source has no texts, so no ESM can be trained for it")
        if ds.features_blob is None:
            raise Invalid(f"dataset {ds.id} has no stored features")
        X = ctx.blobs.get_array(ds.features_blob)
        with ctx.Session() as s:
            have = features_svc.cached(s, ds.sha256, base) is not None
        if not have:
            features_svc.store(ctx, ds, base, X)
        with ctx.Session.begin() as s:
            t = SourceTask(name=name, owner=owner, dataset_id=ds.id, description=description, licence=licence,
                           origin=origin, status=SourceStatus.READY, base_encoder=base,
                           esm_meta={"note": "NPZ source: no texts, no ESM"})
            s.add(t)
            s.flush()
            sid = t.id
        _activate(ctx, sid)
        return get_source(ctx, name), False

    try:
        with ctx.Session.begin() as s:
            job = ctx.jobs.create(s, "train_esm" if train_esm else "embed_source",
                                  message=f"queued: {'ESM training' if train_esm else 'embedding'} for source {name}",
                                  owner=owner)
            t = SourceTask(name=name, owner=owner, dataset_id=ds.id, description=description, licence=licence,
                           origin=origin, status=SourceStatus.PENDING, base_encoder=base, job_id=job.id,
                           esm_meta={"train": train})
            s.add(t)
            s.flush()
            sid, job_id = t.id, job.id
    except IntegrityError:
        raise Conflict(f"a source task named {name!r} already exists; choose another name") from None

    def run(progress: ProgressFn) -> dict[str, Any]:
        return _train_job(ctx, sid, ds, train_esm, train, progress)

    def on_error(err: str) -> None:
        with ctx.Session.begin() as s:
            row = s.get(SourceTask, sid)
            if row is not None:
                row.status, row.error = SourceStatus.FAILED, err

    ctx.jobs.submit(job_id, run, on_error)
    return get_source(ctx, name), True


def _train_job(ctx: Context, sid: int, ds: Dataset, train_esm: bool, train: dict[str, Any],
               progress: ProgressFn) -> dict[str, Any]:
    from app.workers.base import EsmTrainRequest

    base = ctx.settings.base_encoder
    with ctx.Session.begin() as s:
        _row(s, sid).status = SourceStatus.TRAINING if train_esm else SourceStatus.PENDING
    if not train_esm:
        progress(0.0, f"extracting {base} embeddings")
        features_svc.ensure(ctx, ds, [base], progress=progress)
        with ctx.Session.begin() as s:
            _row(s, sid).status = SourceStatus.READY
        _activate(ctx, sid)
        return {"source": sid, "esm": False}
    texts = datasets_svc.texts(ctx, ds)
    labels = datasets_svc.labels(ctx, ds)
    request = EsmTrainRequest(base_encoder=base, texts=texts, labels=labels.tolist(), **train)
    t0 = time.perf_counter()
    from app.training.esm_job import phase_message

    progress(0.0, "loading model")

    def phased(p: float, message: str | None = None, /) -> None:
        progress(0.95 * p, phase_message(p, request.epochs))

    result = ctx.backend.submit_train_esm(request, progress=phased).result()
    progress(0.95, "storing the ESM")
    seconds = time.perf_counter() - t0
    with ctx.Session() as s:
        have_base = features_svc.cached(s, ds.sha256, base) is not None
    if not have_base:
        features_svc.store(ctx, ds, base, np.asarray(result.base_embeddings), seconds)
    metrics = {k: (float(v) if isinstance(v, (int, float, np.floating)) else str(v))
               for k, v in (result.metrics or {}).items()}
    with ctx.blobs.writer() as w:
        key = _store_esm(ctx, w, result.weight, result.bias, {"base_encoder": base, "source_sha256": ds.sha256,
                                                             "method": request.map_fit})
        with ctx.Session.begin() as s:
            t = _row(s, sid)
            t.esm_blob, t.status, t.error = key, SourceStatus.READY, None
            t.esm_meta = {"train": train, "metrics": metrics, "seconds": round(seconds, 2),
                          "bytes": ctx.blobs.path(key).stat().st_size}
    _activate(ctx, sid)
    progress(1.0, "ESM trained")
    return {"source": sid, "esm": key, "metrics": metrics}


def add_ready_source(ctx: Context, *, name: str, dataset: Dataset, base_embeddings: np.ndarray | None,
                     esm: EmbeddingSpaceMap | None = None,
                     description: str = "", licence: str = "", origin: str = "demo",
                     encoder: str | None = None, owner: str | None = None) -> int:
    """Insert a source whose base embeddings (and ESM) already exist, e.g. the demo catalogue.
    Owned by ``owner``, by default the dataset's owner."""
    base = encoder or ctx.settings.base_encoder
    if base_embeddings is not None:
        with ctx.Session() as s:
            have = features_svc.cached(s, dataset.sha256, base) is not None
        if not have:
            features_svc.store(ctx, dataset, base, np.asarray(base_embeddings, dtype=np.float32), base_encoder=base)
    with ctx.blobs.writer() as w:
        key = None
        meta: dict[str, Any] = {}
        if esm is not None:
            weight, bias = esm._require_fitted()
            key = _store_esm(ctx, w, weight, bias, {"base_encoder": base, "source_sha256": dataset.sha256,
                                                           "method": getattr(esm, "method", None)})
            meta = {"method": getattr(esm, "method", None), "shipped": True}
        try:
            with ctx.Session.begin() as s:
                t = SourceTask(name=name, owner=owner or dataset.owner, dataset_id=dataset.id,
                               description=description, licence=licence, origin=origin, status=SourceStatus.READY,
                               base_encoder=base, esm_blob=key, esm_meta=meta)
                s.add(t)
                s.flush()
                sid = t.id
        except IntegrityError:  # another process registered it meanwhile (same content blobs)
            w.keep_all()
            raise Conflict(f"a source task named {name!r} already exists") from None
    _activate(ctx, sid)
    return sid


def delete_source(ctx: Context, name: str, owner: str | None = None, admin: bool = False) -> dict[str, Any]:
    with ctx.Session.begin() as s:
        t = check_write(s.scalar(select(SourceTask).where(SourceTask.name == name)), owner, admin,
                        f"no source task named {name!r}", f"source {name!r}")
        if t.status in (SourceStatus.PENDING, SourceStatus.TRAINING):
            raise Conflict(f"source {name!r} is still {t.status} (job {t.job_id}); wait for the job to end")
        sid, esm_key = t.id, t.esm_blob
        n_scores = rowcount(s.execute(delete(Score).where(Score.source == name, Score.source_kind == "task")))
        placeholder = t.dataset if t.dataset is not None and t.dataset.kind == "esm" else None
        s.delete(t)
        extra_keys = []
        if placeholder is not None:  # an imported ESM's data-less dataset row goes with it
            extra_keys = [k for k in (placeholder.task_embedding_blob, placeholder.labels_blob) if k]
            s.delete(placeholder)
    ctx.index.remove(sid)
    keys = [k for k in [esm_key, *extra_keys] if k]
    if keys:
        with ctx.Session() as s:
            still = datasets_svc.referenced_blobs(s)
        for k in keys:
            if k not in still:
                ctx.blobs.delete(k)
    return {"name": name, "deleted": True, "scores_removed": n_scores}
