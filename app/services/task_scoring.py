"""Tasks rankings at catalogue scale: ESM scores from the target's sufficient statistics.

Every ``esm_*`` estimator of the tasks default (``estimators.esm_stats.SUPPORTED``) is computed
for many sources at once from the target's statistics (``estimators.esm_stats``: O(d^3) per
source, no pass over the target's rows for LogME). ``prefill`` finds the task candidates whose
default ESM scores are not cached yet, computes the target statistics once per (target, base
encoder) and keeps them as a blob, splits the sources into chunks, scores each chunk on the
worker backend (``submit_score_esms``: the local pool or Ray actors, GPU when a worker has
one), and writes each chunk's scores to the score cache as it lands, with progress per chunk.
The ranking that follows then reads every value from the cache (same cache keys as the
one-source path: same estimator, params hash and version).

Scores requested with user parameters, and values a chunk could not compute (NaN: e.g. a map
that collapses the target), are left to the one-source path, which reports their errors.
"""
from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, wait

import numpy as np

from app.core.logging import get_logger
from app.services import scores as scores_svc

log = get_logger("task_scoring")

#: Sources per worker chunk (each chunk holds its ESMs in memory: ~1.2 MB per source at d=384).
CHUNK_SOURCES = 64
#: Chunks in flight per worker (the rest wait, so other jobs are not starved behind them).
IN_FLIGHT_PER_WORKER = 2
STATS_FORMAT = "esm-stats-1"

_stats_blobs: OrderedDict[tuple, str] = OrderedDict()  # (target sha, encoder, version) -> blob key
_stats_lock = threading.Lock()


def supported(estimator: str) -> bool:
    from estimators.esm_stats import SUPPORTED

    return estimator in SUPPORTED


def target_stats_blob(ctx, target_sha256: str, encoder: str, X_target: np.ndarray, y) -> str:
    """Blob key of the target's ``TargetStats`` (``.npz``, no pickle), computed on first use per
    (target, base encoder, code version) and found again by content afterwards."""
    from estimators.esm_stats import TargetStats

    ck = (target_sha256, encoder, scores_svc.version(), STATS_FORMAT)
    with _stats_lock:
        key = _stats_blobs.get(ck)
    if key is not None and ctx.blobs.exists(key):
        return key
    stats = TargetStats.from_data(X_target, y)
    buf = io.BytesIO()
    np.savez(buf, **stats.to_arrays())
    key = ctx.blobs.put_bytes(buf.getvalue(), "npz")
    with _stats_lock:
        _stats_blobs[ck] = key
        while len(_stats_blobs) > 256:
            _stats_blobs.popitem(last=False)
    return key


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def prefill(ctx, target_sha256: str, n_examples: int, encoder: str, X_target: np.ndarray, y,
            candidates: list, estimators_: list[str], params_of: Callable[[str, object], dict],
            progress: Callable[[float], None] | None = None, *, chunk_sources: int = CHUNK_SOURCES,
            device: str = "auto") -> dict:
    """Compute and cache the missing default ESM scores of the task candidates.

    candidates: objects with ``source``, ``kind`` ("task"), ``encoder``, ``esm_key`` (the ESM
    blob) — the ranking's candidates. params_of(estimator, candidate): the score's params as the
    ranking keys them. Returns ``{"computed", "sources", "chunks", "failed"}``.
    """
    from app.workers.scoring import EsmScoreRequest

    report = progress or (lambda p: None)
    ests = [e for e in estimators_ if supported(e)]
    tasks = [c for c in candidates if getattr(c, "kind", None) == "task" and c.esm_key is not None]
    out = {"computed": 0, "sources": 0, "chunks": 0, "failed": 0}
    if not ests or not tasks:
        return out
    ver = scores_svc.version()
    with ctx.Session() as s:
        cache = scores_svc.lookup_target(s, target_sha256, ests, ver)
    todo = []  # (candidate, {estimator: (params, params hash)}) with at least one missing score
    for c in tasks:
        missing = {}
        for e in ests:
            params = params_of(e, c)
            if set(params) - {"source_sha256", "esm"}:
                continue  # user parameters: the one-source path
            ph = scores_svc.params_hash(params)
            if scores_svc.key(c.source, target_sha256, c.encoder, e, ph, ver) not in cache:
                missing[e] = (params, ph)
        if missing:
            todo.append((c, missing))
    if not todo:
        report(1.0)
        return out
    cols = [e for e in ests if any(e in m for _, m in todo)]
    stats_path = str(ctx.blobs.path(target_stats_blob(ctx, target_sha256, encoder, X_target, y)))
    backend = ctx.backend
    workers = int(getattr(backend, "max_workers", None) or getattr(backend, "num_actors", None) or 2)
    limit = max(1, workers * IN_FLIGHT_PER_WORKER)
    chunks = list(_chunks(todo, int(chunk_sources)))
    pending: dict = {}
    done_sources = 0

    def submit(chunk):
        req = EsmScoreRequest(stats_path=stats_path, esm_paths=[str(ctx.blobs.path(c.esm_key)) for c, _ in chunk],
                              estimators=cols, device=device)
        pending[backend.submit_score_esms(req)] = chunk

    queue = iter(chunks)
    for chunk in queue:
        submit(chunk)
        if len(pending) >= limit:
            break
    while pending:
        finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for fut in finished:
            chunk = pending.pop(fut)
            try:
                values = np.asarray(fut.result(), dtype=np.float64)
            except Exception as exc:  # noqa: BLE001 -- the one-source path retries these sources
                log.warning("ESM scoring chunk of %d sources failed: %s: %s", len(chunk), type(exc).__name__, exc)
                out["failed"] += len(chunk)
                values = None
            rows = []
            if values is not None:
                for i, (c, missing) in enumerate(chunk):
                    for j, e in enumerate(cols):
                        if e not in missing or not np.isfinite(values[i, j]):
                            continue
                        params, ph = missing[e]
                        rows.append(dict(source=c.source, source_kind="task", target_sha256=target_sha256,
                                         encoder=c.encoder, estimator=e, params_hash=ph, params=params,
                                         version=ver, value=float(values[i, j]), n=n_examples, seconds=None))
            out["computed"] += scores_svc.store_many(ctx, rows)
            out["chunks"] += 1
            done_sources += len(chunk)
            report(done_sources / len(todo))
            nxt = next(queue, None)
            if nxt is not None:
                submit(nxt)
    out["sources"] = len(todo)
    log.info("ESM statistics path: %d scores of %d sources in %d chunks (%d sources failed)",
             out["computed"], out["sources"], out["chunks"], out["failed"])
    return out
