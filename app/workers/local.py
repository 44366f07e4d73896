"""The embedded worker backend: encoders on a bounded thread pool inside the API process, and
CPU-heavy numerics in a small pool of worker processes (``app.workers.procpool``).

What runs where:

- worker processes (``processes``, default ``max_workers``; ``TRANSFERRANK_WORKER_PROCESSES``):
  the ESM scoring chunks of a tasks ranking on CPU (``submit_score_esms``) and every
  ``submit_call`` -- the rankings' estimator cells and bootstrap re-scoring. Pure numpy/scipy,
  the GIL-holding part of a job, so the API process keeps its GIL and (``nice``) its cores.
- threads of this process: feature extraction (``submit_embed``) and ESM training
  (``submit_train_esm``) -- torch releases the GIL in its kernels, and an encoder is loaded
  once per process (a copy per worker process would multiply the weights' memory) -- and ESM
  scoring on a GPU. The job runner's own thread (SQL, blob reads, pickling the inputs) stays
  in the API process too.
- ``processes=0``: everything on threads, as before.

Encoders come from ``app.encoders.registry.get_encoder`` (a process-wide bounded LRU shared with
the rest of the API process), so repeated jobs on the same encoder do not reload weights. torch
releases the GIL in its kernels, so threads are enough to overlap a forward pass with request
handling; ``max_workers`` bounds concurrency (and memory: each in-flight job holds one batch of
activations).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from typing import Any

import numpy as np

from app.core.lru import LRU
from app.encoders.base import EncoderSpec
from app.workers.base import Cancelled, EsmTrainRequest, ProgressFn, WorkerBackend
from app.workers.procpool import NumericPool


class EncoderCache:
    """A thread-safe LRU of loaded encoders by name: at most ``capacity`` kept at once
    (``app.core.lru.LRU``: two threads asking for the same missing encoder load it once).

    ``loader(name)`` builds an encoder (default: ``registry.build_encoder(registry.resolve(name))``,
    uncached, so this LRU alone bounds the memory). Used by each Ray actor.
    """

    def __init__(self, capacity: int = 2, loader: Callable[[str], object] | None = None) -> None:
        self._lru: LRU[str, object] = LRU(capacity)
        self.capacity = capacity
        self._loader = loader

    def _load(self, name: str) -> object:
        if self._loader is not None:
            return self._loader(name)
        from app.encoders.registry import build_encoder, resolve

        return build_encoder(resolve(name))  # not the registry's cache: this LRU is the bound

    def get(self, name: str | EncoderSpec) -> object:
        """The loaded encoder for a registry name, or for an ``EncoderSpec`` (a user model,
        cached under its full identity)."""
        if not isinstance(name, str):
            spec = name
            key = f"{spec.name}|{spec.kind}|{spec.path}|{sorted((spec.options or {}).items())!r}"
            from app.encoders.registry import build_encoder

            return self._lru.get(key, lambda: build_encoder(spec))
        return self._lru.get(name, lambda: self._load(name))

    def names(self) -> list[str]:
        return self._lru.keys()


def _safe_progress(progress: ProgressFn | None) -> ProgressFn | None:
    """Wrap a progress callback so it is clamped, monotone and never breaks the job."""
    if progress is None:
        return None
    last = [0.0]

    def report(value: float, message: str | None = None, /) -> None:
        v = min(1.0, max(last[0], float(value)))
        last[0] = v
        try:
            progress(v) if message is None else progress(v, message)
        except Cancelled:  # the job was cancelled: stop the computation here
            raise
        except Exception:  # a failing progress sink must not fail the computation
            pass

    return report


def embed_texts(encoder, texts: Sequence[str], *, batch_size: int | None = None,
                progress: ProgressFn | None = None) -> np.ndarray:
    """Run ``encoder.encode`` and check the result is a float32 (n, dim) array."""
    kwargs: dict[str, Any] = {"progress": progress}
    if batch_size is not None:
        kwargs["batch_size"] = int(batch_size)
    out = np.asarray(encoder.encode(list(texts), **kwargs), dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != len(texts):
        raise RuntimeError(
            f"encoder {getattr(getattr(encoder, 'spec', None), 'name', encoder)!r} returned shape "
            f"{out.shape} for {len(texts)} texts; expected ({len(texts)}, dim)"
        )
    return out


def _then_report(fut: Future, report: ProgressFn | None) -> Future:
    """A future of ``fut``'s result that first reports 1.0 (``Cancelled`` from the report fails it)."""
    if report is None:
        return fut
    out: Future = Future()

    def relay(f: Future) -> None:
        try:
            if f.cancelled():
                out.cancel()
                return
            exc = f.exception()
            if exc is not None:
                out.set_exception(exc)
                return
            try:
                report(1.0)
            except Cancelled as cancelled:
                out.set_exception(cancelled)
                return
            out.set_result(f.result())
        except InvalidStateError:  # cancelled by the caller meanwhile
            pass

    out.add_done_callback(lambda o: fut.cancel() if o.cancelled() else None)
    fut.add_done_callback(relay)
    return out


class LocalBackend(WorkerBackend):
    """Runs jobs in this machine: encoders on a bounded thread pool of this process, CPU-heavy
    numerics on a bounded pool of worker processes (see the module docstring)."""

    name = "local"

    def __init__(self, max_workers: int = 2, cache_dir: str | os.PathLike | None = None, *,
                 processes: int | None = None, nice: int = 10, idle: bool = False) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        if processes is not None and processes < 0:
            raise ValueError(f"processes must be >= 0, got {processes}")
        self.max_workers = int(max_workers)
        self.cache_dir = cache_dir  # encoder caches (distilled model2vec); None: Settings.data_dir
        self._pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="transferrank-worker")
        self.processes = self.max_workers if processes is None else int(processes)
        self.nice, self.idle = int(nice), bool(idle)
        self._procs = shared_pool(self.processes, self.nice, self.idle) if self.processes else None

    def submit_call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if self._procs is None:
            return super().submit_call(fn, *args, **kwargs)
        return self._procs.submit(fn, *args, **kwargs)

    def submit_embed(self, encoder: str | EncoderSpec, texts: Sequence[str], *,
                     progress: ProgressFn | None = None) -> Future:
        texts = list(texts)
        report = _safe_progress(progress)

        def run() -> np.ndarray:
            from app.encoders.registry import get_encoder  # the process-wide bounded LRU

            enc = get_encoder(encoder, cache_dir=self.cache_dir)
            out = embed_texts(enc, texts, progress=report)
            if report is not None:
                report(1.0)
            return out

        return self._pool.submit(run)

    def submit_train_esm(self, request: EsmTrainRequest, *, progress: ProgressFn | None = None) -> Future:
        report = _safe_progress(progress)

        def run():
            from app.training.esm_job import train_esm

            result = train_esm(request, report)
            if report is not None:
                report(1.0)
            return result

        return self._pool.submit(run)

    def submit_score_esms(self, request, *, progress: ProgressFn | None = None) -> Future:
        report = _safe_progress(progress)
        if self._procs is not None:
            from dataclasses import replace

            from app.workers.scoring import pick_device, score_esm_chunk

            if pick_device(request.device) is None:  # CPU: numpy in a worker process
                return _then_report(self._procs.submit(score_esm_chunk, replace(request, device="cpu")), report)

        def run() -> np.ndarray:
            from app.workers.scoring import score_esm_chunk

            out = score_esm_chunk(request, report)
            if report is not None:
                report(1.0)
            return out

        return self._pool.submit(run)

    def describe(self) -> dict:
        devices = ["cpu"]
        try:
            import torch

            threads = torch.get_num_threads()
            if torch.cuda.is_available():
                devices = [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
        except Exception:  # pragma: no cover - torch is a service dependency
            threads = None
        return {
            "backend": self.name,
            "workers": self.max_workers,
            "processes": self.processes,
            "devices": devices,
            "cpu_count": os.cpu_count(),
            "torch_threads": threads,
        }

    def shutdown(self) -> None:
        # the worker processes are shared by this process's backends (``shared_pool``): they stay
        self._pool.shutdown(wait=False, cancel_futures=True)


_shared: dict[tuple[int, int, bool], NumericPool] = {}
_shared_lock = threading.Lock()


def shared_pool(processes: int, nice: int, idle: bool = False) -> NumericPool:
    """The process's worker-process pool of that size and priority: one per (size, nice, idle), started
    on first use and shared by every ``LocalBackend`` of this process (tests and CLI commands
    open several contexts; the processes hold no per-context state)."""
    with _shared_lock:
        pool = _shared.get((processes, nice, idle))
        if pool is None:
            pool = _shared[(processes, nice, idle)] = NumericPool(processes, nice=nice, idle=idle)
        return pool
