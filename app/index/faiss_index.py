"""Task index over FAISS (inner product on L2-normalised task embeddings = cosine similarity).

Every dataset (source task or target) gets a *task embedding*: by default the mean of its
base-encoder example embeddings, L2-normalised (``task_embedding``; other methods can be
plugged in with ``register_task_embedding`` and are recorded in the index metadata so an
index built with another method is detected as stale).

``TaskIndex(path, dim)`` opens the index stored at ``path`` (FAISS binary, plus
``<path>.meta.json``) or creates an empty one. Index types:
- ``"flat"`` (default): ``IndexIDMap2(IndexFlatIP)`` -- exact search, O(N d) per query.
- ``"ivf"``: ``IndexIDMap2(IndexIVFFlat)`` with ``nlist`` inverted lists (default
  ~4 sqrt(N)) trained on the vectors it is built from and ``nprobe`` lists probed per query
  -- approximate, for very large catalogues; needs ``rebuild`` (or a first ``add``) with at
  least ``nlist`` vectors to train. Query cost O(nprobe N / nlist d); measured latencies and
  recall are in ``bench/results/component_costs.md``.

Ids are int64 (the SQL primary keys of the datasets). ``add`` is an upsert; ``remove``
deletes; ``save`` writes atomically (temporary file + ``os.replace``; the metadata with the
id count and checksum is written last, and both are cross-checked on load). ``is_stale``
compares the indexed ids with the ids SQL says should be there; ``TaskIndex.rebuild``
recreates the file from ``(id, vector)`` items. All methods are thread-safe.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import cast

import numpy as np

from app.core.config import Settings

log = logging.getLogger(__name__)

META_VERSION = 1
DEFAULT_METHOD = "mean"

# --------------------------------------------------------------------------- task embeddings

TaskEmbeddingFn = Callable[..., np.ndarray]
TASK_EMBEDDINGS: dict[str, TaskEmbeddingFn] = {}


def register_task_embedding(name: str, fn: TaskEmbeddingFn) -> None:
    """Register a task-embedding method ``fn(X, y=None) -> (d,) vector``."""
    TASK_EMBEDDINGS[name] = fn


def _l2(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm <= 0.0:
        raise ValueError("task embedding has zero or non-finite norm (all-zero features?)")
    return v / norm


def _mean_embedding(X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    return _l2(X.mean(axis=0))


def _class_mean_embedding(X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """Mean of the class means (each class weighs the same); falls back to the mean w/o y."""
    if y is None:
        return _mean_embedding(X)
    y = np.asarray(y)
    if y.shape != (X.shape[0],):
        raise ValueError(f"labels must have shape ({X.shape[0]},), got {y.shape}")
    _, inv = np.unique(y, return_inverse=True)
    sums = np.zeros((inv.max() + 1, X.shape[1]))
    np.add.at(sums, inv, X)
    means = sums / np.bincount(inv)[:, None]
    return _l2(means.mean(axis=0))


register_task_embedding("mean", _mean_embedding)
register_task_embedding("class-mean", _class_mean_embedding)


def task_embedding(
    X: np.ndarray, y: np.ndarray | None = None, *, method: str = DEFAULT_METHOD
) -> np.ndarray:
    """Task embedding of a dataset from its (n, d) base embeddings -> float32 (d,), unit norm.

    ``method="mean"`` (default): mean of the rows, L2-normalised (computed in float64).
    ``method="class-mean"``: mean of the per-class means (needs ``y``), L2-normalised.
    """
    if method not in TASK_EMBEDDINGS:
        raise ValueError(f"unknown task embedding {method!r}; known: {sorted(TASK_EMBEDDINGS)}")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"features must be a non-empty 2-D array (n, d), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("features contain NaN or inf")
    return np.asarray(TASK_EMBEDDINGS[method](X, y), dtype=np.float32)


# --------------------------------------------------------------------------- the index

_threads_lock = threading.Lock()
_threads_set = False


def _configure_faiss_threads(faiss) -> None:
    """FAISS's OpenMP threads, once per process: ``Settings.faiss_threads`` (default 1: OpenMP
    spin-waiting on a shared machine slows single queries down; see bench/results)."""
    global _threads_set
    with _threads_lock:
        if not _threads_set:
            faiss.omp_set_num_threads(Settings.from_env().faiss_threads)
            _threads_set = True



def ids_checksum(ids: Iterable[int] | np.ndarray) -> str:
    """Order-independent sha256 of a set of int64 ids (compare the index with SQL)."""
    arr = np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64))
    return hashlib.sha256(arr.astype("<i8").tobytes()).hexdigest()


def _as_ids(ids) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError("ids must be >= 0 (-1 is FAISS's 'no result' marker)")
    return arr


class TaskIndex:
    """Persistent FAISS inner-product index of task embeddings keyed by int64 ids."""

    nlist: int | None
    nprobe: int | None
    load_problem: str | None

    def __init__(
        self,
        path: str | os.PathLike,
        dim: int,
        *,
        kind: str = "flat",
        nlist: int | None = None,
        nprobe: int | None = None,
        method: str = DEFAULT_METHOD,
    ):
        self._init_empty(path, dim, kind=kind, nlist=nlist, nprobe=nprobe, method=method)
        if self.path.exists():
            self._try_load()
        elif self.meta_path.exists():
            self.load_problem = "index file missing (metadata present)"

    # ---------------------------------------------------------------- construction
    def _new_index(self, train: np.ndarray | None = None):
        faiss = self._faiss
        if self.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        return None if train is None else self._new_ivf(train)

    def _new_ivf(self, train: np.ndarray):
        faiss = self._faiss
        n = train.shape[0]
        nlist = int(self.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39 or 1)))
        if n < nlist:
            raise ValueError(f"an IVF index with nlist={nlist} needs >= {nlist} vectors to train, got {n}")
        index = faiss.index_factory(self.dim, f"IDMap2,IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = 1234
        index.train(train)
        ivf.nprobe = int(self.nprobe or max(1, nlist // 8))
        self.nlist = nlist
        return index

    def _try_load(self) -> None:
        faiss = self._faiss
        try:
            meta = json.loads(self.meta_path.read_text())
            index = faiss.read_index(str(self.path))
        except Exception as exc:  # missing meta, truncated/corrupt file
            self.load_problem = f"unreadable index ({type(exc).__name__}: {exc})"
            log.warning("task index %s not used: %s", self.path, self.load_problem)
            return
        ids = faiss.vector_to_array(index.id_map).astype(np.int64) if hasattr(index, "id_map") else None
        problems = []
        if index.d != self.dim:
            problems.append(f"dim {index.d} != {self.dim}")
        if meta.get("kind") != self.kind:
            problems.append(f"kind {meta.get('kind')!r} != {self.kind!r}")
        if meta.get("method") != self.method:
            problems.append(f"task embedding {meta.get('method')!r} != {self.method!r}")
        if ids is None or meta.get("count") != int(index.ntotal) or meta.get("checksum") != ids_checksum(ids):
            problems.append("metadata does not match the stored ids")
        if problems:
            self.load_problem = "; ".join(problems)
            log.warning("task index %s not used: %s", self.path, self.load_problem)
            return
        if self.kind == "ivf":
            ivf = faiss.extract_index_ivf(index)
            self.nlist = int(ivf.nlist)
            ivf.nprobe = int(self.nprobe or meta.get("nprobe") or max(1, ivf.nlist // 8))
        self._index = index
        self.loaded_from_disk = True

    @classmethod
    def rebuild(
        cls,
        path: str | os.PathLike,
        dim: int,
        items: Iterable[tuple[int, np.ndarray]] | tuple[np.ndarray, np.ndarray],
        *,
        save: bool = True,
        **kwargs,
    ) -> TaskIndex:
        """A fresh index of ``items`` (``(id, vector)`` pairs or an ``(ids, vectors)`` pair)."""
        if isinstance(items, tuple) and len(items) == 2 and isinstance(items[1], np.ndarray) and np.ndim(items[1]) == 2:
            ids, vecs = _as_ids(items[0]), np.asarray(items[1], dtype=np.float32)
        else:
            pairs = cast(list[tuple[int, np.ndarray]], list(items))
            ids = _as_ids([int(i) for i, _ in pairs])
            vecs = (
                np.stack([np.asarray(v, dtype=np.float32).reshape(-1) for _, v in pairs])
                if pairs
                else np.zeros((0, int(dim)), dtype=np.float32)
            )
        self = cls.__new__(cls)
        cls._init_empty(self, path, dim, **kwargs)
        if self.kind == "ivf" and len(ids) == 0:
            raise ValueError("cannot build an IVF index from zero items")
        self.add(ids, vecs)
        if save:
            self.save()
        return self

    def _init_empty(self, path, dim, *, kind="flat", nlist=None, nprobe=None, method=DEFAULT_METHOD):
        import faiss

        _configure_faiss_threads(faiss)
        self._faiss = faiss
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if kind not in ("flat", "ivf"):
            raise ValueError(f"index kind must be 'flat' or 'ivf', got {kind!r}")
        self.path = Path(path)
        self.meta_path = self.path.with_name(self.path.name + ".meta.json")
        self.dim, self.kind, self.nlist, self.nprobe, self.method = int(dim), kind, nlist, nprobe, method
        self._lock = threading.RLock()
        self.loaded_from_disk = False
        self.load_problem = None
        self._index = self._new_index()

    # ---------------------------------------------------------------- introspection
    def __len__(self) -> int:
        with self._lock:
            return 0 if self._index is None else int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        """The ids in the index (int64, insertion order)."""
        with self._lock:
            if self._index is None:
                return np.zeros(0, dtype=np.int64)
            return self._faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def __contains__(self, id_: int) -> bool:
        return bool(np.isin(np.int64(id_), self.ids()))

    def fingerprint(self) -> tuple[int, str]:
        """(count, checksum of the ids): compare with the same from SQL."""
        ids = self.ids()
        return int(ids.size), ids_checksum(ids)

    def is_stale(self, expected_ids: Iterable[int] | np.ndarray | None = None) -> bool:
        """True when the file was missing/unusable or the ids differ from ``expected_ids``."""
        if expected_ids is not None:
            exp = np.unique(_as_ids(np.fromiter(expected_ids, dtype=np.int64)
                                     if not isinstance(expected_ids, np.ndarray) else expected_ids))
            have = np.unique(self.ids())
            if exp.size != have.size or not np.array_equal(exp, have):
                return True
        return self.load_problem is not None

    # ---------------------------------------------------------------- mutation
    def _prep(self, vectors: np.ndarray, n: int | None = None) -> np.ndarray:
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim == 1:
            v = v.reshape(1, -1)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}), got {np.shape(vectors)}")
        if n is not None and v.shape[0] != n:
            raise ValueError(f"{n} ids but {v.shape[0]} vectors")
        if not np.isfinite(v).all():
            raise ValueError("vectors contain NaN or inf")
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        if (norms <= 0).any():
            raise ValueError("vectors must be non-zero (they are L2-normalised for cosine search)")
        return np.ascontiguousarray(v / norms, dtype=np.float32)

    def add(self, ids, vectors) -> None:
        """Insert or replace (upsert) the vectors of ``ids``; vectors are L2-normalised."""
        ids = _as_ids(ids)
        v = self._prep(vectors, len(ids))
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be unique within one add()")
        if len(ids) == 0:
            return
        with self._lock:
            if self._index is None:  # untrained IVF: train on the first batch
                self._index = self._new_ivf(v)
            self._remove(ids)
            self._index.add_with_ids(v, ids)

    def _remove(self, ids: np.ndarray) -> int:
        if self._index is None or self._index.ntotal == 0 or len(ids) == 0:
            return 0
        sel = self._faiss.IDSelectorBatch(len(ids), self._faiss.swig_ptr(ids))
        return int(self._index.remove_ids(sel))

    def remove(self, ids) -> int:
        """Delete ``ids`` (missing ids are ignored); returns how many were removed."""
        ids = np.ascontiguousarray(_as_ids(ids))
        with self._lock:
            return self._remove(ids)

    # ---------------------------------------------------------------- search
    def search_many(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch search -> (similarities (m, k'), ids (m, k')) with k' = min(k, len)."""
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = self._prep(queries)
        with self._lock:
            n = len(self)
            kk = min(int(k), n)
            if kk == 0:
                return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
            sims, ids = self._index.search(q, kk)
        return sims, ids

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` nearest ids by cosine similarity, best first: ``[(id, similarity), ...]``."""
        v = np.asarray(vector)
        if v.ndim != 1:
            raise ValueError(f"search takes one vector of shape ({self.dim},), got {v.shape}")
        sims, ids = self.search_many(v[None, :], k)
        return [(int(i), float(s)) for i, s in zip(ids[0], sims[0]) if i >= 0]

    # ---------------------------------------------------------------- persistence
    def save(self) -> None:
        """Write the index and its metadata atomically (tmp file + ``os.replace``)."""
        with self._lock:
            if self._index is None:
                raise ValueError("an untrained IVF index has nothing to save: add vectors first")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            count, checksum = self.fingerprint()
            meta = {
                "version": META_VERSION,
                "dim": self.dim,
                "kind": self.kind,
                "method": self.method,
                "count": count,
                "checksum": checksum,
            }
            if self.kind == "ivf":
                ivf = self._faiss.extract_index_ivf(self._index)
                meta.update(nlist=int(ivf.nlist), nprobe=int(ivf.nprobe))
            # the metadata goes first as a temp file, the index is swapped in, then the meta:
            # a crash in between leaves a meta/ids mismatch that _try_load reports as stale.
            fd, tmp_idx = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            os.close(fd)
            fd, tmp_meta = tempfile.mkstemp(prefix=f".{self.meta_path.name}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(meta, f)
                    f.flush()
                    os.fsync(f.fileno())
                self._faiss.write_index(self._index, tmp_idx)
                with open(tmp_idx, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp_idx, self.path)
                os.replace(tmp_meta, self.meta_path)
            finally:
                for p in (tmp_idx, tmp_meta):
                    if os.path.exists(p):
                        os.unlink(p)
            self.load_problem = None

    def delete_files(self) -> None:
        """Remove the index and metadata files (the in-memory index is kept)."""
        for p in (self.path, self.meta_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
