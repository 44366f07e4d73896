"""The feature cache: features of a dataset under an encoder, computed once per
(encoder, dataset sha256) on a worker and stored as a blob referenced from ``feature_sets``.

Task embeddings (mean of the base-encoder features, L2-normalised) are derived here too and
stored on the dataset row; FAISS is updated by ``app.services.index``.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.errors import Invalid
from app.core.logging import get_logger
from app.core.progress import ProgressFn
from app.db.models import Dataset, FeatureSet

if TYPE_CHECKING:
    from app.services.context import Context

log = get_logger("features")



def task_embedding(X: np.ndarray) -> np.ndarray:
    """Mean of the rows, L2-normalised, float32 (the index helper's definition when available)."""
    try:
        from app.index.faiss_index import task_embedding as _te

        return np.asarray(_te(X), dtype=np.float32).reshape(-1)
    except ImportError:
        v = np.asarray(X, dtype=np.float64).mean(axis=0)
        norm = np.linalg.norm(v)
        return np.asarray(v / norm if norm > 0 else v, dtype=np.float32)


def cached(session: Session, dataset_sha256: str, encoder: str) -> FeatureSet | None:
    return session.scalar(select(FeatureSet).where(FeatureSet.dataset_sha256 == dataset_sha256,
                                                   FeatureSet.encoder == encoder))


def cached_encoders(session: Session, dataset_sha256: str) -> set[str]:
    return set(session.scalars(select(FeatureSet.encoder).where(FeatureSet.dataset_sha256 == dataset_sha256)))


def load(ctx: Context, fs: FeatureSet) -> np.ndarray:
    return ctx.blobs.get_array(fs.blob)


def get_features(ctx: Context, ds: Dataset, encoder: str) -> np.ndarray | None:
    with ctx.Session() as s:
        fs = cached(s, ds.sha256, encoder)
    return None if fs is None else load(ctx, fs)


def store(ctx: Context, ds: Dataset, encoder: str, X: np.ndarray, seconds: float | None = None,
          *, base_encoder: str | None = None) -> FeatureSet:
    """Blob first, then the row; a concurrent duplicate keeps the first row (same content)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] != ds.n_examples:
        raise ValueError(f"encoder {encoder} returned shape {X.shape} for {ds.n_examples} texts")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"encoder {encoder} produced NaN/inf features for dataset {ds.id}")
    with ctx.blobs.writer() as w:
        key = w.put_array(X)
        te_key = None
        if encoder == (base_encoder or ctx.settings.base_encoder):
            te_key = w.put_array(task_embedding(X))
        try:
            with ctx.Session.begin() as s:
                row = FeatureSet(dataset_id=ds.id, dataset_sha256=ds.sha256, encoder=encoder, blob=key,
                                 n=int(X.shape[0]), dim=int(X.shape[1]), seconds=seconds)
                s.add(row)
                if te_key is not None:
                    # every row with this content (one per owner) shares the embedding
                    s.execute(update(Dataset).where(Dataset.sha256 == ds.sha256).values(task_embedding_blob=te_key))
        except IntegrityError:
            w.keep_all()
            with ctx.Session() as s:
                existing = cached(s, ds.sha256, encoder)
            if existing is None:
                raise
            return existing
    return row


def dataset_task_embedding(ctx: Context, ds: Dataset) -> np.ndarray | None:
    with ctx.Session() as s:
        key = s.scalar(select(Dataset.task_embedding_blob).where(Dataset.id == ds.id))
    return None if key is None else ctx.blobs.get_array(key)


def ensure(ctx: Context, ds: Dataset, encoders: Sequence[str],
           progress: ProgressFn | None = None, timings: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Features of ``ds`` under each encoder: cached ones loaded, missing ones computed on the
    worker backend (all submitted at once, progress averaged), stored, then returned.

    Progress messages name the phase per encoder (``extracting features: 1/3 encoders ready;
    minilm-l6 45%, glove-6b-50d 80%``, percentages in 5 % steps). ``timings``, when given, gets
    ``{"extraction_s": {encoder: seconds}, "extraction_wall_s": seconds}`` for the encoders
    computed here: per encoder, from its first progress report (or the submission when the
    worker reports only at the end) to its result; the wall time covers them all (they run
    concurrently on the backend's workers)."""
    from app.services import datasets as datasets_svc

    out: dict[str, np.ndarray] = {}
    missing: list[str] = []
    with ctx.Session() as s:
        for enc in encoders:
            fs = cached(s, ds.sha256, enc)
            if fs is not None:
                out[enc] = load(ctx, fs)
            else:
                missing.append(enc)
    if not missing:
        if progress:
            progress(1.0)
        return out
    if ds.kind == "image":
        from app.services import images as images_svc

        texts = images_svc.load_images(ctx, ds)  # PIL images: the image encoders' input
    elif ds.kind != "text":
        raise Invalid(f"dataset {ds.id} holds precomputed features; it cannot be embedded with {', '.join(missing)}")
    else:
        texts = datasets_svc.texts(ctx, ds)
    fractions = {enc: 0.0 for enc in missing}
    started: dict[str, float] = {}
    lock = threading.Lock()

    def report(enc: str) -> ProgressFn:
        def cb(p: float, message: str | None = None, /) -> None:
            with lock:
                if enc not in started and float(p) < 1.0:
                    started[enc] = time.perf_counter()
                fractions[enc] = min(max(float(p), 0.0), 1.0)
                if progress:
                    progress(sum(fractions.values()) / len(fractions), _extraction_message(fractions))
        return cb

    t0 = time.perf_counter()
    if progress:
        progress(0.0, _extraction_message(fractions))
    owned, futures = _submit_once(ctx, ds, missing, texts, report)
    done_at: dict[str, float] = {}

    def finished(enc: str) -> Callable[[Future[Any]], None]:
        def cb(_: Future[Any]) -> None:
            done_at.setdefault(enc, time.perf_counter())
        return cb

    for enc, fut in futures.items():
        fut.add_done_callback(finished(enc))
    errors = []
    try:
        for enc, fut in futures.items():
            try:
                X = np.asarray(fut.result())
            except Exception as exc:  # noqa: BLE001 - reported on the job
                errors.append(f"{enc}: {exc}")
                continue
            seconds = time.perf_counter() - t0
            X = _split_probs(ctx, ds, enc, X, seconds if enc in owned else None)
            if enc in owned:
                store(ctx, ds, enc, X, seconds)
                log.info("features %s x %s: %s in %.2fs", ds.id, enc, X.shape, seconds)
            out[enc] = np.ascontiguousarray(X, dtype=np.float32)
    finally:
        with _INFLIGHT_LOCK:
            for enc in owned:
                _INFLIGHT.pop((ctx.instance_id, ds.sha256, enc), None)
    if errors:
        raise RuntimeError("feature extraction failed: " + "; ".join(errors))
    if timings is not None:
        end = time.perf_counter()
        timings["extraction_s"] = {enc: round(done_at.get(enc, end) - started.get(enc, t0), 3) for enc in missing}
        timings["extraction_wall_s"] = round(end - t0, 3)
    return out


def _extraction_message(fractions: dict[str, float]) -> str:
    """``extracting features: 1/3 encoders ready; a 45%, b 5%`` (5 % steps; queued ones last)."""
    ready = sum(1 for f in fractions.values() if f >= 1.0)
    busy = [f"{enc} {int(20 * f) * 5}%" for enc, f in fractions.items() if 0.0 < f < 1.0]
    queued = [enc for enc, f in fractions.items() if f <= 0.0]
    parts = busy + ([f"waiting: {', '.join(queued)}"] if queued else [])
    return f"extracting features: {ready}/{len(fractions)} encoders ready" + ("; " + ", ".join(parts) if parts else "")


def _split_probs(ctx: Context, ds: Dataset, enc: str, X: np.ndarray, seconds: float | None) -> np.ndarray:
    """A user model with a classification head returns ``[features | probs]``: keep the probs
    under ``<enc>#probs`` (stored when ``seconds`` is given) and return the features."""
    from app.services import models as models_svc

    z = models_svc.n_probs(ctx, enc)
    if z <= 0 or X.ndim != 2 or X.shape[1] <= z:
        return X
    if seconds is not None:
        with ctx.Session() as s:
            have = cached(s, ds.sha256, enc + models_svc.PROBS_SUFFIX) is not None
        if not have:
            store(ctx, ds, enc + models_svc.PROBS_SUFFIX, X[:, -z:], seconds)
    return X[:, :-z]


# (service instance, dataset sha256, encoder) -> Future of a running extraction, so that two requests needing
# the same features at the same time share one forward pass instead of computing it twice.
_INFLIGHT: dict[tuple[str, str, str], Future[Any]] = {}
_INFLIGHT_LOCK = threading.Lock()


def _submit_once(ctx: Context, ds: Dataset, encoders: list[str], texts: list[str],
                 report: Callable[[str], ProgressFn]) -> tuple[set[str], dict[str, Future[Any]]]:
    owned: set[str] = set()
    futures: dict[str, Future[Any]] = {}
    with _INFLIGHT_LOCK:
        for enc in encoders:
            key = (ctx.instance_id, ds.sha256, enc)
            if key in _INFLIGHT:
                futures[enc] = _INFLIGHT[key]
            else:
                from app.services.models import worker_encoder  # a user model travels as its spec

                futures[enc] = _INFLIGHT[key] = ctx.backend.submit_embed(worker_encoder(ctx, enc), texts,
                                                                         progress=report(enc))
                owned.add(enc)
    return owned, futures
