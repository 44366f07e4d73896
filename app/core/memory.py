"""Giving memory back to the operating system after a large job.

A large job (a models ranking over thousands of texts: feature arrays, mixture fits, bootstrap
resamples, forward-pass activations) leaves the process's heap grown: Python frees its objects,
but glibc keeps the freed pages in its arenas (one per thread that allocated) and below the
dynamic mmap threshold, so the RSS stays at the job's peak. ``release()`` collects reference
cycles (``gc.collect``) and asks glibc to return free pages of every arena (``malloc_trim(0)``,
through ctypes; a no-op on other C libraries). The job runner calls it after every job during
which the process grew by ``app.services.jobs.RELEASE_AFTER_BYTES`` (64 MiB) or more.

``rss_bytes()`` reads the current resident set size (``/proc/self/statm``; None elsewhere).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
from functools import cache

_lock = threading.Lock()


@cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


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
