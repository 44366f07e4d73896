"""The one thread-safe bounded LRU (loaded encoders in the API process and in each Ray actor).

``get(key, load)`` returns the cached value or calls ``load()`` once per missing key, even when
several threads ask at the same time; the load runs outside the global lock (other keys stay
served). A per-key lock is removed whether the load succeeds or raises, so a failed load leaves
nothing behind and the next call retries.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    def __init__(self, maxsize: int):
        if int(maxsize) < 1:
            raise ValueError(f"cache capacity must be >= 1, got {maxsize}")
        self.maxsize = int(maxsize)
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[K, threading.Lock] = {}

    def get(self, key: K, load: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            try:
                value = load()  # errors propagate to the caller; the cache stays clean
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self._items[key] = value
                self._items.move_to_end(key)
                while len(self._items) > self.maxsize:
                    self._items.popitem(last=False)
            return value

    def drop_where(self, predicate: Callable[[K], bool]) -> None:
        """Forget every entry whose key satisfies ``predicate``."""
        with self._lock:
            for k in [k for k in self._items if predicate(k)]:
                del self._items[k]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def keys(self) -> list[K]:
        """Keys, least recently used first."""
        with self._lock:
            return list(self._items)
