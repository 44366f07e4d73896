"""Giving memory back to the operating system after a large job.

A large job (a models ranking over thousands of texts: feature arrays, mixture fits, bootstrap
resamples, forward-pass activations) leaves the process's heap grown: Python frees its objects,
but glibc keeps the freed pages in its arenas (one per thread that allocated) and below the
dynamic mmap threshold, so the RSS stays at the job's peak. ``release()`` collects reference
cycles (``gc.collect``) and asks glibc to return free pages of every arena (``malloc_trim(0)``,
through ctypes; a no-op on other C libraries). The job runner calls it after every job during
which the process grew by ``app.services.jobs.RELEASE_AFTER_BYTES`` (64 MiB) or more.

``rss_bytes()`` reads the current resident set size (``/proc/self/statm``; None elsewhere).

``configure_malloc()`` runs when the ``app`` package is imported, first thing in every service
process (the API process and each worker process): it limits glibc to ``MALLOC_ARENAS`` (1)
malloc arena.
By default glibc gives each thread that allocates its own arena (up to 8 per core), and
``malloc_trim`` cannot shrink the top of a thread's arena: once a job's large temporaries have
raised glibc's dynamic thresholds, each such arena keeps up to 64 MB of freed memory resident
(measured: ~25 MB after a 14k-text MiniLM extraction on an embedding thread, still there after
``release()``). With one arena every thread allocates from the main heap, which ``malloc_trim``
returns entirely. The shared lock showed no slowdown (MiniLM + tf-idf extraction of 3,000 texts
on two embedding threads; Python code holds the GIL anyway, and glibc's per-thread caches serve
small allocations without the lock). A limit chosen by the
operator -- ``MALLOC_ARENA_MAX`` or a ``glibc.malloc`` entry in ``GLIBC_TUNABLES`` -- is left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
from functools import cache
from typing import Any

_lock = threading.Lock()

#: glibc malloc arenas of a service process (``configure_malloc``): one, the main heap.
MALLOC_ARENAS = 1
_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def configure_malloc(arenas: int = MALLOC_ARENAS) -> bool:
    """Limit glibc malloc to ``arenas`` arenas (``mallopt(M_ARENA_MAX)``; see the module
    docstring). Affects the threads that have not allocated yet, so it runs first thing in a
    service process. True when set; False with another C library or when the environment
    already sets a limit (``MALLOC_ARENA_MAX``, ``GLIBC_TUNABLES`` with ``glibc.malloc``)."""
    if arenas < 1:
        raise ValueError(f"arenas must be >= 1, got {arenas}")
    if os.environ.get("MALLOC_ARENA_MAX") or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    fn = _libc_fn("mallopt", (ctypes.c_int, ctypes.c_int))
    return bool(fn(_M_ARENA_MAX, int(arenas))) if fn is not None else False


@cache
def _libc_fn(name: str, argtypes: tuple[Any, ...]) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """A glibc function through ctypes (``malloc_trim``, ``mallopt``), or None elsewhere."""
    lib = ctypes.util.find_library("c")
    if not lib:
        return None
    try:
        fn = getattr(ctypes.CDLL(lib), name)  # glibc only
    except (OSError, AttributeError):
        return None
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn


def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    return _libc_fn("malloc_trim", (ctypes.c_size_t,))


def rss_bytes() -> int | None:
    """Resident set size of this process in bytes (Linux), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_if_grown(baseline: int | None, threshold: int) -> tuple[int, int | None] | None:
    """``release()`` if the resident size has grown by ``threshold`` bytes or more since
    ``baseline`` (an earlier ``rss_bytes()``); returns the sizes (before, after) when it ran."""
    before = rss_bytes()
    if before is None or baseline is None or before - baseline < threshold:
        return None
    release()
    return before, rss_bytes()


def release() -> bool:
    """``gc.collect()`` then glibc's ``malloc_trim(0)``; True when the trim ran and returned memory.
    Serialised (two jobs ending together trim once each, not concurrently)."""
    with _lock:
        gc.collect()
        trim = _malloc_trim()
        return bool(trim(0)) if trim is not None else False
