"""The service context: settings, SQL, blob store, FAISS index, worker backend and job runner.

Building a ``Context`` opens connections and nothing else; the start-up work (migrations, reaping
stale jobs, seeding the demo catalogue, checking the index) is ``app.services.startup``.
"""
from __future__ import annotations

import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.logging import get_logger
from app.db.session import make_engine, make_sessionmaker
from app.storage.blobs import BlobStore

if TYPE_CHECKING:
    from app.services.index import IndexManager
    from app.services.jobs import JobRunner
    from app.workers.base import WorkerBackend

log = get_logger("context")


class Context:
    settings: Settings
    engine: Engine
    Session: sessionmaker[Session]
    blobs: BlobStore
    index: IndexManager
    jobs: JobRunner

    def __init__(self, settings: Settings, backend: WorkerBackend | None = None) -> None:
        from app.services.index import IndexManager
        from app.services.jobs import JobRunner

        self.settings = settings
        self.instance_id = uuid.uuid4().hex
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(settings.db_url)
        self.Session = make_sessionmaker(self.engine)
        self.blobs = BlobStore(settings.blob_dir)
        self.index = IndexManager(self)
        self.jobs = JobRunner(self)
        self.auth_cache: dict[str, Any] = {}
        self._backend = backend
        self._backend_lock = threading.Lock()
        self.started_at = time.time()

    @classmethod
    def open(cls, settings: Settings | None = None, *, backend: WorkerBackend | None = None,
             migrate: bool = True, seed: bool | None = None) -> Context:
        """``app.services.startup.open_context``: a context with the start-up work done."""
        from app.services.startup import open_context

        return open_context(settings, backend=backend, migrate=migrate, seed=seed)

    @property
    def backend(self) -> WorkerBackend:
        with self._backend_lock:
            if self._backend is None:
                from app.workers import get_backend

                self._backend = get_backend(self.settings)
                log.info("worker backend: %s", self._backend.describe())
            return self._backend

    def describe(self) -> dict[str, Any]:
        return {"data_dir": str(self.settings.data_dir.resolve()),
                "database": self.engine.url.get_backend_name(),
                "workers": self._backend.describe() if self._backend is not None else {"backend": "not started"},
                "index": self.index.describe(), "base_encoder": self.settings.base_encoder}

    def close(self) -> None:
        self.jobs.shutdown(wait=True)  # bounded: TRANSFERRANK_SHUTDOWN_SECONDS
        if self._backend is not None:
            try:
                self._backend.shutdown()
            except Exception:  # pragma: no cover
                log.exception("worker backend shutdown failed")
        self.engine.dispose()
