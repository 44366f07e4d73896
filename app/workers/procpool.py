"""CPU-heavy numerics of the embedded backend in a small pool of worker *processes*.

The API process handles requests; a ranking job's numerics (the ESM scoring chunks, each
estimator cell, the bootstrap's re-scoring) would otherwise share its GIL and cores with the
request handlers (a cached ``POST /v1/rankings`` took ~2 s while a large job ran). Here they run
in a ``ProcessPoolExecutor`` with the ``spawn`` context:

- bounded: ``size`` processes (``TRANSFERRANK_WORKER_PROCESSES``, default the local pool size),
  started on first use; each call's inputs are pickled to the process and its result back, so
  a process holds only what its current call needs (plus the last few target statistics,
  ``app.workers.scoring.load_target_stats``). No encoder and no database connection is loaded
  there: memory per process is the interpreter + numpy/scipy (~100 MB) + the call's arrays.
- polite: each process limits BLAS/OpenMP to one thread (``threadpoolctl``, and the usual
  environment variables for libraries loaded later) and lowers its CPU priority by ``nice``
  (``os.nice``), so the API process's request handling wins the cores. With ``idle`` (the
  service's default, ``TRANSFERRANK_WORKER_IDLE``) it also takes Linux's ``SCHED_IDLE`` policy:
  it runs only on a core that nothing else of normal priority wants, and a request handler that
  wakes up preempts it at once (``nice`` only weighs the shares: measured in ``bench/load.py``).
- lean: a call after which the process has grown by ``RELEASE_AFTER_BYTES`` or more gives the freed
  pages back to the operating system afterwards (``app.core.memory.release``: gc + glibc
  ``malloc_trim``), so a large job does not leave every worker at its peak. That release runs
  while the call's arguments and result are still referenced (by the executor), so once the
  process has been idle for ``IDLE_RELEASE_SECONDS`` a watcher thread releases again against
  the size of the last idle release: what the job's last calls left (their pickled arguments,
  results, temporaries) is freed by then. glibc is limited to one malloc arena
  (``app.core.memory.configure_malloc``, run by importing ``app``), as in the API process.
- zero-pickle for large arrays: a numpy array argument of ``SHARED_MIN_BYTES`` or more crosses
  through a file in shared memory (``/dev/shm``, removed when the call ends) instead of the
  pickle. numpy fills it without holding the GIL; the pickle's copy holds it (a 44 MB feature
  matrix stalled every request of the API process for ~10 ms per call). The worker maps the
  file copy-on-write. Without ``/dev/shm`` the arrays are pickled as before.
- robust: a process that dies (killed, out of memory) breaks the executor; the call fails with
  ``WorkerProcessDied`` (its job is marked failed with that message) and the next call starts a
  fresh executor.

Cancellation stays cooperative, as on threads: a call still waiting for a process is cancelled
with its future (``Future.cancel``); a running call finishes its (short) piece of work and the
job stops at its next progress report.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["NumericPool", "WorkerProcessDied", "worker_init"]

BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


#: Growth of a worker process since its last release above which it trims its heap after a call.
RELEASE_AFTER_BYTES = 16 * 2**20  # a small process: the gc + trim take milliseconds
#: Seconds without a call after which a worker process releases what its last calls left.
IDLE_RELEASE_SECONDS = 0.5

_floor: int | None = None  # the worker's resident size after its last release (or at its start)
_idle_floor: int | None = None  # the least size after an idle release (or at its start)
_calls = 0  # calls finished in this process
_running = 0  # calls running now
_activity = threading.Condition()

#: numpy arguments of at least this many bytes go to the worker through shared memory, not the pickle.
SHARED_MIN_BYTES = 1 << 20
SHM_ROOT = Path("/dev/shm")
_SHM_PREFIX = "transferrank-shm-"


@dataclass(frozen=True)
class SharedArray:
    """A numpy argument placed in a shared-memory ``.npy`` file for one call (``share_arrays``)."""

    path: str

    def load(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="c")  # copy-on-write: the estimator may not modify the file


def share_arrays(args: tuple[Any, ...], kwargs: dict[str, Any], folder: str | None
                 ) -> tuple[tuple[Any, ...], dict[str, Any], list[str]]:
    """``args`` and ``kwargs`` with every large numpy array (top level) written to ``folder`` and
    replaced by a ``SharedArray``; also the files written (the caller removes them)."""
    made: list[str] = []
    if folder is None:
        return args, kwargs, made

    def one(v: Any) -> Any:
        if not (isinstance(v, np.ndarray) and v.dtype.hasobject is False and v.nbytes >= SHARED_MIN_BYTES):
            return v
        path = os.path.join(folder, f"{uuid.uuid4().hex}.npy")
        made.append(path)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=v.dtype, shape=v.shape)
        out[...] = v  # numpy's copy runs without the GIL
        del out
        return SharedArray(path)

    try:
        return tuple(one(a) for a in args), {k: one(v) for k, v in kwargs.items()}, made
    except OSError:  # shared memory full or gone: pickle this call's arrays as before
        remove_files(made)
        return args, kwargs, []


def remove_files(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _unshare(v: Any) -> Any:
    return v.load() if isinstance(v, SharedArray) else v


def _shm_folder() -> str | None:
    """A fresh folder of this process under ``/dev/shm`` (None where there is none); folders left
    by processes that no longer exist (killed) are removed first."""
    if not SHM_ROOT.is_dir() or not os.access(SHM_ROOT, os.W_OK):
        return None
    for old in SHM_ROOT.glob(f"{_SHM_PREFIX}*"):
        pid = old.name[len(_SHM_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    try:
        return tempfile.mkdtemp(prefix=f"{_SHM_PREFIX}{os.getpid()}-", dir=SHM_ROOT)
    except OSError:  # pragma: no cover - full or read-only
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's process
        return True
    return True


def _run(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """In the worker process: the call, then ``release()`` if the process has grown by
    ``RELEASE_AFTER_BYTES`` or more since its last release (many small calls add up too); the
    idle watcher (``release_when_idle``) hears of it."""
    from app.core.memory import release_if_grown

    global _floor, _calls, _running
    with _activity:
        _running += 1
    try:
        return fn(*(_unshare(a) for a in args), **{k: _unshare(v) for k, v in kwargs.items()})
    finally:
        try:
            sizes = release_if_grown(_floor, RELEASE_AFTER_BYTES)
            if sizes is not None:
                _floor = sizes[1] or sizes[0]
        finally:
            with _activity:
                _running -= 1
                _calls += 1
                _activity.notify_all()


def release_when_idle(idle: float) -> bool:
    """Wait for a call to finish and then for ``idle`` seconds without calls; then release the
    memory if the process has grown by ``RELEASE_AFTER_BYTES`` since its last idle release (the
    calls' arguments and results are gone by then). True when it released.

    The idle floor only goes down: "idle" cannot see a call whose arguments are still arriving
    (unpickled before the call starts), so a release then measures them too, and taking that
    size as the floor would keep a large argument resident for good. A process that grew for
    good (a model it caches) then releases once per idle period: a gc and a trim while idle."""
    from app.core.memory import release_if_grown

    global _floor, _idle_floor
    with _activity:
        seen = _calls
        _activity.wait_for(lambda: _calls != seen)
    with _activity:
        while not _quiet_for(idle):  # busy: wait for the calls running now to end, then for quiet again
            _activity.wait_for(lambda: _running == 0)
    sizes = release_if_grown(_idle_floor, RELEASE_AFTER_BYTES)
    if sizes is not None:
        _floor = sizes[1] or sizes[0]
        _idle_floor = _floor if _idle_floor is None else min(_idle_floor, _floor)
    return sizes is not None


def _quiet_for(idle: float) -> bool:
    """With ``_activity`` held: True when no call starts or ends within ``idle`` seconds."""
    seen = _calls
    return not _activity.wait_for(lambda: _calls != seen or _running > 0, timeout=idle)


def _release_when_idle_loop(idle: float) -> None:
    """The worker's idle watcher thread (started by ``worker_init``)."""
    while True:
        try:
            release_when_idle(idle)
        except Exception:  # pragma: no cover - housekeeping never ends the worker
            time.sleep(idle)


class WorkerProcessDied(RuntimeError):
    """A worker process ended while running a call (killed, or out of memory)."""


def _exit_with_parent(parent: int, every: float = 0.5) -> None:
    """End this worker process when the process that started it is gone (``kill -9`` of the API
    process: the pool's queues never report it, and an idle worker would wait forever)."""
    while True:
        time.sleep(every)
        if os.getppid() != parent:
            os._exit(0)


def worker_init(nice: int, threads: int, idle: bool = False) -> None:
    """Initialiser of each worker process: ``threads`` BLAS threads, CPU priority lowered by
    ``nice`` (and the ``SCHED_IDLE`` policy with ``idle``, where the OS has it), a watchdog
    that ends it with its parent and the idle release (one malloc arena: importing ``app`` set it).
    The release floors start at the process's size now, before any call's arguments arrive."""
    from app.core.memory import rss_bytes

    global _floor, _idle_floor
    _floor = _idle_floor = rss_bytes()
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="transferrank-parent-watch",
                     daemon=True).start()
    threading.Thread(target=_release_when_idle_loop, args=(IDLE_RELEASE_SECONDS,), name="transferrank-idle-release",
                     daemon=True).start()
    for name in BLAS_ENV:
        os.environ[name] = str(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)  # numpy is already imported (app.workers imports it)
    except Exception:  # pragma: no cover - threadpoolctl is a dependency of scikit-learn
        pass
    if nice > 0:
        try:
            os.nice(nice)
        except OSError:  # pragma: no cover - not allowed here: run at the same priority
            pass
    if idle and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:  # pragma: no cover - not allowed here: nice alone
            pass


def _pid() -> int:
    return os.getpid()


def _nice() -> int:
    return os.nice(0)


def _policy() -> int:
    return os.sched_getscheduler(0)


def _blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return max((int(i.get("num_threads", 1)) for i in threadpool_info()), default=1)


def _at_thread_exit(fn: Callable[[], None]) -> None:
    """Run ``fn`` when the interpreter starts to exit, before ``concurrent.futures`` joins its
    executors (the hook it uses itself; these hooks run last-registered first)."""
    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover - CPython < 3.9
        import atexit

        atexit.register(fn)
    else:
        register(fn)


class NumericPool:
    """A bounded, lazily started pool of worker processes; ``submit(fn, *args, **kwargs)`` as an
    executor (``fn`` must be importable by name: a module-level function)."""

    def __init__(self, size: int, *, nice: int = 5, threads: int = 1, idle: bool = False) -> None:
        if size < 1:
            raise ValueError(f"the process pool needs at least 1 process, got {size}")
        self.size, self.nice, self.threads, self.idle = int(size), int(nice), int(threads), bool(idle)
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False
        self._exit_hook = False
        self._shm: str | None = None  # this pool's shared-memory folder, made on first use
        self._shm_made = False

    def _get(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker process pool is shut down")
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    max_workers=self.size, mp_context=multiprocessing.get_context("spawn"),
                    initializer=worker_init, initargs=(self.nice, self.threads, self.idle))
                # start every process now (the executor spawns one per submit while none is idle):
                # the service's memory after its first job is then its steady size
                for _ in range(self.size):
                    self._executor.submit(_pid)
                if not self._exit_hook:
                    _at_thread_exit(self._kill)
                    self._exit_hook = True
            return self._executor

    def _discard(self, executor: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is executor:
                self._executor = None
        executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """The call's future; a dead worker process fails it with ``WorkerProcessDied``."""
        out: Future[Any] = Future()
        args, kwargs, files = share_arrays(args, kwargs, self._shared_folder())
        for attempt in (0, 1):
            executor = self._get()
            try:
                inner = executor.submit(_run, fn, args, kwargs)
                break
            except BrokenProcessPool:  # broken before this call: start a fresh pool once
                self._discard(executor)
                if attempt:
                    remove_files(files)
                    raise WorkerProcessDied("the worker processes could not be started") from None
            except BaseException:
                remove_files(files)
                raise
        if files:
            inner.add_done_callback(lambda _f: remove_files(files))

        def relay(f: Future[Any]) -> None:
            if out.done():  # cancelled by the caller meanwhile
                return
            try:
                if f.cancelled():
                    out.cancel()
                    return
                exc = f.exception()
                if isinstance(exc, BrokenProcessPool):
                    self._discard(executor)
                    out.set_exception(WorkerProcessDied(
                        f"a worker process ended while computing {getattr(fn, '__name__', 'a call')} "
                        "(killed, or out of memory); repeat the request"))
                elif exc is not None:
                    out.set_exception(exc)
                else:
                    out.set_result(f.result())
            except InvalidStateError:  # cancelled between the check and the hand-over
                pass

        # ``out`` stays pending until the call ends, so ``out.cancel()`` works (and cancels the
        # call while it still waits for a process; a running call cannot be interrupted)
        out.add_done_callback(lambda o: inner.cancel() if o.cancelled() else None)
        inner.add_done_callback(relay)
        return out

    def _shared_folder(self) -> str | None:
        with self._lock:
            if not self._shm_made:
                self._shm, self._shm_made = _shm_folder(), True
            return self._shm

    def _remove_shared_folder(self) -> None:
        with self._lock:
            folder, self._shm, self._shm_made = self._shm, None, False
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def pids(self) -> list[int]:
        """The pids of the started worker processes (for tests and diagnostics)."""
        with self._lock:
            ex = self._executor
        procs = getattr(ex, "_processes", None) or {}
        return sorted(int(p) for p in procs)

    def _kill(self) -> None:
        """At interpreter exit: end the worker processes now. The executor's own exit hook
        would wait for each running call to finish (a job's computation is abandoned at exit,
        as on the threads, which are daemons)."""
        with self._lock:
            ex, self._executor = self._executor, None
        self._remove_shared_folder()
        if ex is None:
            return
        for proc in list((getattr(ex, "_processes", None) or {}).values()):
            try:
                proc.kill()
            except Exception:  # pragma: no cover - already gone
                pass
        ex.shutdown(wait=True, cancel_futures=True)  # quick now; the executor ends while modules exist

    def shutdown(self, wait: bool = False) -> None:
        with self._lock:
            self._closed = True
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=wait, cancel_futures=True)
        self._remove_shared_folder()
