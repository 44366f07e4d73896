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

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, TypeVar

import numpy as np

from app.core.logging import get_logger
from app.core.progress import ProgressFn, no_progress
from app.services import scores as scores_svc

log = get_logger("task_scoring")

#: Sources per worker chunk (each chunk holds its ESMs in memory: ~1.2 MB per source at d=384).
CHUNK_SOURCES = 64
#: Chunks in flight per worker (the rest wait, so other jobs are not starved behind them).
IN_FLIGHT_PER_WORKER = 2
STATS_FORMAT = "esm-stats-1"

_stats_blobs: OrderedDict[tuple[str, ...], str] = OrderedDict()  # (target sha, encoder, version) -> blob key
_stats_lock = threading.Lock()


def supported(estimator: str) -> bool:
    from estimators.esm_stats import SUPPORTED

    return estimator in SUPPORTED


def target_stats_blob(ctx: Any, target_sha256: str, encoder: str, X_target: np.ndarray, y: Any) -> str:
    """Blob key of the target's ``TargetStats`` (``.npz``, no pickle), computed on first use per
    (target, base encoder, code version) and found again by content afterwards. Computed and
    written by a worker (``app.workers.scoring.save_target_stats``: an n d^2 product and a file
    of the target's size, kept out of the API process)."""
    from app.workers.scoring import save_target_stats

    ck = (target_sha256, encoder, scores_svc.version(), STATS_FORMAT)
    with _stats_lock:
        key = _stats_blobs.get(ck)
    if key is not None and ctx.blobs.exists(key):
        return key
    key = str(ctx.backend.submit_call(save_target_stats, str(ctx.blobs.root), X_target, y).result())
    with _stats_lock:
        _stats_blobs[ck] = key
        while len(_stats_blobs) > 256:
            _stats_blobs.popitem(last=False)
    return key


_T = TypeVar("_T")
_Todo = tuple[Any, dict[str, tuple[dict[str, Any], str]]]


def _chunks(items: list[_T], size: int) -> Iterable[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def prefill(ctx: Any, target_sha256: str, n_examples: int, encoder: str, X_target: np.ndarray, y: Any,
            candidates: list[Any], estimators_: list[str], params_of: Callable[[str, Any], dict[str, Any]],
            progress: ProgressFn | None = None, *, chunk_sources: int = CHUNK_SOURCES,
            device: str = "auto") -> dict[str, Any]:
    """Compute and cache the missing default ESM scores of the task candidates.

    candidates: objects with ``source``, ``kind`` ("task"), ``encoder``, ``esm_key`` (the ESM
    blob) — the ranking's candidates. params_of(estimator, candidate): the score's params as the
    ranking keys them. progress: ``ProgressFn``, reported after each chunk. Returns
    ``{"computed", "sources", "chunks", "failed", "keys"}`` (keys: the cache keys stored).
    """
    report: ProgressFn = progress or no_progress
    ests = [e for e in estimators_ if supported(e)]
    tasks = [c for c in candidates if getattr(c, "kind", None) == "task" and c.esm_key is not None]
    out: dict[str, Any] = {"computed": 0, "sources": 0, "chunks": 0, "failed": 0, "keys": set()}
    if not ests or not tasks:
        return out
    ver = scores_svc.version()
    with ctx.Session() as s:
        cache = scores_svc.lookup_target(s, target_sha256, ests, ver)
    todo: list[_Todo] = []  # (candidate, {estimator: (params, params hash)}), a score missing
    for c in tasks:
        missing: dict[str, tuple[dict[str, Any], str]] = {}
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
        report(1.0, None)
        return out
    cols = [e for e in ests if any(e in m for _, m in todo)]
    try:
        stats_path = str(ctx.blobs.path(target_stats_blob(ctx, target_sha256, encoder, X_target, y)))
    except ValueError as exc:  # e.g. float targets: the one-source path scores and reports them
        log.info("no statistics path for target %s: %s", target_sha256[:12], exc)
        return out
    done_sources = 0
    for chunk, values in run_chunks(ctx, stats_path, todo, cols, device=device, chunk_sources=chunk_sources):
        rows: list[dict[str, Any]] = []
        if values is None:
            out["failed"] += len(chunk)
        else:
            for i, (c, missing) in enumerate(chunk):
                for j, e in enumerate(cols):
                    if e not in missing or not np.isfinite(values[i, j]):
                        continue
                    params, ph = missing[e]
                    rows.append(dict(source=c.source, source_kind="task", target_sha256=target_sha256,
                                     encoder=c.encoder, estimator=e, params_hash=ph, params=params,
                                     version=ver, value=float(values[i, j]), n=n_examples, seconds=None))
        out["computed"] += scores_svc.store_many(ctx, rows)
        out["keys"].update(scores_svc.key(r["source"], target_sha256, r["encoder"], r["estimator"],
                                          r["params_hash"], ver) for r in rows)
        out["chunks"] += 1
        done_sources += len(chunk)
        report(done_sources / len(todo), f"scored {done_sources} of {len(todo)} sources' ESMs")
    out["sources"] = len(todo)
    log.info("ESM statistics path: %d scores of %d sources in %d chunks (%d sources failed)",
             out["computed"], out["sources"], out["chunks"], out["failed"])
    return out


def run_chunks(ctx: Any, stats_path: str, todo: list[_T], cols: list[str], *, device: str = "auto",
               chunk_sources: int = CHUNK_SOURCES, options: dict[str, Any] | None = None
               ) -> Iterable[tuple[list[_T], np.ndarray | None]]:
    """Score ``todo`` (items whose first element has ``esm_key``) in chunks on the worker backend,
    ``cols`` per source (``app.workers.scoring.score_esm_chunk``), at most ``IN_FLIGHT_PER_WORKER``
    chunks per worker in flight. Yields ``(chunk, values (k, len(cols)))`` as chunks finish (in any
    order); values is None for a chunk that failed (logged)."""
    from app.workers.scoring import EsmScoreRequest

    backend = ctx.backend
    workers = int(getattr(backend, "max_workers", None) or getattr(backend, "num_actors", None) or 2)
    limit = max(1, workers * IN_FLIGHT_PER_WORKER)
    pending: dict[Future[Any], list[_T]] = {}

    def submit(chunk: list[_T]) -> None:
        req = EsmScoreRequest(stats_path=stats_path,
                              esm_paths=[str(ctx.blobs.path(_first(item).esm_key)) for item in chunk],
                              estimators=cols, device=device, options=dict(options or {}))
        pending[backend.submit_score_esms(req)] = chunk

    queue = iter(list(_chunks(todo, int(chunk_sources))))
    for chunk in queue:
        submit(chunk)
        if len(pending) >= limit:
            break
    while pending:
        finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for fut in finished:
            chunk = pending.pop(fut)
            try:
                values: np.ndarray | None = np.asarray(fut.result(), dtype=np.float64)
            except Exception as exc:  # noqa: BLE001 -- the caller falls back for these sources
                log.warning("ESM scoring chunk of %d sources failed: %s: %s", len(chunk), type(exc).__name__, exc)
                values = None
            yield chunk, values
            nxt = next(queue, None)
            if nxt is not None:
                submit(nxt)


def _first(item: Any) -> Any:
    return item[0] if isinstance(item, tuple) else item
