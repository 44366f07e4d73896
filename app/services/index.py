"""The FAISS task index of source tasks (inner product on L2-normalised task embeddings).

The index file lives in the data dir (``TaskIndex`` writes a metadata file with an id
checksum beside it). SQL is the truth: ``ensure()`` rebuilds the file from the task embeddings
referenced in SQL when it is missing, unreadable or its ids disagree with SQL (stale),
and inserts / deletes keep both in step.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from app.core.logging import get_logger
from app.core.status import SourceStatus
from app.db.models import Dataset, SourceTask

if TYPE_CHECKING:
    from app.index.faiss_index import TaskIndex
    from app.services.context import Context

log = get_logger("index")


class IndexManager:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.path: Path = ctx.settings.index_path
        self._lock = threading.RLock()
        self._index: TaskIndex | None = None
        self._ids: set[int] = set()
        self._dim: int | None = None
        self.rebuilds = 0

    # ------------------------------------------------------------------ SQL truth
    def _sql_items(self) -> list[tuple[int, np.ndarray]]:
        with self.ctx.Session() as s:
            rows = s.execute(
                select(SourceTask.id, Dataset.task_embedding_blob)
                .join(Dataset, Dataset.id == SourceTask.dataset_id)
                .where(Dataset.task_embedding_blob.is_not(None), SourceTask.status != SourceStatus.FAILED,
                       SourceTask.base_encoder == self.ctx.settings.base_encoder)
            ).all()
        items = []
        for sid, key in rows:
            if key is None:
                continue
            try:
                items.append((int(sid), np.asarray(self.ctx.blobs.get_array(key), dtype=np.float32).reshape(-1)))
            except FileNotFoundError:
                log.warning("task embedding blob %s of source %s is missing; not indexed", key, sid)
        return items

    def _sql_ids(self) -> set[int]:
        with self.ctx.Session() as s:
            return set(s.scalars(
                select(SourceTask.id).join(Dataset, Dataset.id == SourceTask.dataset_id)
                .where(Dataset.task_embedding_blob.is_not(None), SourceTask.status != SourceStatus.FAILED,
                       SourceTask.base_encoder == self.ctx.settings.base_encoder)))

    # ------------------------------------------------------------------ file
    def _base_dim(self) -> int:
        try:
            from app.encoders.registry import get_spec

            return int(get_spec(self.ctx.settings.base_encoder).dim or 384)
        except Exception:
            return 384

    def rebuild(self) -> int:
        from app.index.faiss_index import TaskIndex

        with self._lock:
            items = self._sql_items()
            dim = int(items[0][1].shape[0]) if items else self._base_dim()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._index = TaskIndex.rebuild(self.path, dim, items)
            self._ids, self._dim = {i for i, _ in items}, dim
            self.rebuilds += 1
            log.info("FAISS task index rebuilt from SQL: %d sources, dim %d -> %s", len(items), dim, self.path)
            return len(items)

    def ensure(self, *, adding: int | set[int] | None = None) -> None:
        """Open the index, rebuilding it from SQL if the file is missing, unreadable or stale.

        ``adding``: source id(s) already in SQL that the caller is about to add; their absence from
        the file is expected and does not make the index stale (no full rebuild per insert).
        """
        from app.index.faiss_index import TaskIndex

        with self._lock:
            sql_ids = self._sql_ids() - (adding if isinstance(adding, set) else {adding})
            if self._index is not None and self._ids == sql_ids and self.path.exists():
                return
            if self.path.exists():
                idx = TaskIndex(self.path, self._dim or self._base_dim())
                if not idx.is_stale(sql_ids):
                    self._index, self._ids, self._dim = idx, sql_ids, idx.dim
                    return
                log.warning("task index %s is stale (%s); rebuilding from SQL", self.path,
                            idx.load_problem or "ids differ from SQL")
            self.rebuild()

    def _opened(self) -> TaskIndex:
        """The open index (``ensure`` or ``rebuild`` opened it)."""
        if self._index is None:  # pragma: no cover - ensure() always opens or rebuilds it
            raise RuntimeError("the FAISS task index is not open")
        return self._index

    # ------------------------------------------------------------------ updates
    def add(self, source_id: int, vector: np.ndarray) -> None:
        with self._lock:
            self.ensure(adding=source_id)
            if source_id in self._ids:
                return
            v = np.asarray(vector, dtype=np.float32).reshape(1, -1)
            if self._dim is not None and v.shape[1] != self._dim:
                if self._ids:
                    raise ValueError(f"task embedding has dim {v.shape[1]}, the index {self._dim}")
                self.rebuild()
                return
            index = self._opened()
            index.add(np.asarray([source_id], dtype=np.int64), v)
            index.save()
            self._ids.add(source_id)

    def add_many(self, items: list[tuple[int, np.ndarray]]) -> None:
        """``add`` for many sources at once: one SQL check and one write of the index file (a bulk
        import of N sources costs O(N), not N index writes)."""
        if not items:
            return
        with self._lock:
            new = {sid: np.asarray(v, dtype=np.float32).reshape(-1) for sid, v in items}
            self.ensure(adding=set(new))
            new = {sid: v for sid, v in new.items() if sid not in self._ids}
            if not new:
                return
            dims = {v.shape[0] for v in new.values()}
            if self._dim is not None and dims != {self._dim}:
                if self._ids:
                    raise ValueError(f"task embeddings have dim {sorted(dims)}, the index {self._dim}")
                self.rebuild()
                return
            index = self._opened()
            index.add(np.asarray(list(new), dtype=np.int64), np.stack(list(new.values())))
            index.save()
            self._ids.update(new)

    def remove(self, source_id: int) -> None:
        with self._lock:
            if self._index is None or source_id not in self._ids:
                return
            index = self._opened()
            index.remove(np.asarray([source_id], dtype=np.int64))
            index.save()
            self._ids.discard(source_id)

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        with self._lock:
            self.ensure()
            if not self._ids:
                return []
            hits = self._opened().search(np.asarray(vector, dtype=np.float32).reshape(-1), int(k))
            return [(int(i), float(sim)) for i, sim in hits]

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {"path": str(self.path), "sources": len(self._ids), "dim": self._dim, "rebuilds": self.rebuilds}
