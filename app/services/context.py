"""The service context: settings, SQL, blob store, FAISS index, worker backend and job runner.

``Context.open(settings)`` is what both ``transferrank serve`` (FastAPI) and the CLI build:
it creates the data dir, applies migrations (``alembic upgrade head``), fails jobs left
unfinished by an earlier process, mirrors the encoder catalogue into SQL, seeds the demo
catalogue (first start, idempotent) and makes sure the FAISS index matches SQL.
"""
from __future__ import annotations

import threading
import time
import uuid

from sqlalchemy import select

from app.core.config import Settings
from app.core.errors import Conflict
from app.core.logging import get_logger, setup_logging
from app.db.models import SourceTask
from app.db.session import make_engine, make_sessionmaker, upgrade
from app.storage.blobs import BlobStore

log = get_logger("context")


class Context:
    def __init__(self, settings: Settings, backend=None):
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
        self.auth_cache: dict = {}
        self._backend = backend
        self._backend_lock = threading.Lock()
        self.started_at = time.time()

    @classmethod
    def open(cls, settings: Settings | None = None, *, backend=None, migrate: bool = True,
             seed: bool | None = None) -> "Context":
        settings = settings or Settings.from_env()
        setup_logging(settings.log_level)
        ctx = cls(settings, backend=backend)
        if migrate:
            t0 = time.perf_counter()
            upgrade(settings.db_url, ctx.engine)
            log.info("database %s at head (%.2fs)", ctx.engine.url.render_as_string(hide_password=True),
                     time.perf_counter() - t0)
        ctx.jobs.reap(all_unfinished=settings.is_sqlite)
        from app.services.sources import sync_encoders

        sync_encoders(ctx)
        if settings.seed_demo if seed is None else seed:
            seed_demo(ctx)
            from app.services.models import seed_demo_models

            seed_demo_models(ctx)  # the small image models trained here (TorchScript)
        ctx.index.ensure()
        return ctx

    @property
    def backend(self):
        with self._backend_lock:
            if self._backend is None:
                from app.workers import get_backend

                self._backend = get_backend(self.settings)
                log.info("worker backend: %s", self._backend.describe())
            return self._backend

    def warm_up(self) -> None:
        """Load every enabled model candidate on the workers in the background (first use of
        model2vec distils it from MiniLM, ~1 minute), so the first ranking does not wait for it."""
        from app.db.models import EncoderRow

        with self.Session() as s:
            names = list(s.scalars(select(EncoderRow.name).where(EncoderRow.enabled.is_(True),
                                                                 EncoderRow.status == "ready")))

        def done(name, t0):
            def cb(fut):
                exc = fut.exception()
                if exc is None:
                    log.info("encoder %s ready (%.1fs)", name, time.perf_counter() - t0)
                else:
                    log.warning("encoder %s failed to load: %s", name, exc)
            return cb

        from app.services.models import warm_up_inputs, worker_encoder

        for name in names:
            t0 = time.perf_counter()
            enc = worker_encoder(self, name)  # a user model travels as its spec
            self.backend.submit_embed(enc, warm_up_inputs(enc)).add_done_callback(done(name, t0))

    def describe(self) -> dict:
        return {"data_dir": str(self.settings.data_dir.resolve()),
                "database": self.engine.url.get_backend_name(),
                "workers": self._backend.describe() if self._backend is not None else {"backend": "not started"},
                "index": self.index.describe(), "base_encoder": self.settings.base_encoder}

    def close(self) -> None:
        self.jobs.shutdown(wait=False)
        if self._backend is not None:
            try:
                self._backend.shutdown()
            except Exception:  # pragma: no cover
                log.exception("worker backend shutdown failed")
        self.engine.dispose()


def seed_demo(ctx: Context) -> dict:
    """Add the demo catalogue's sources that are not in SQL yet (idempotent)."""
    from app.services import datasets as datasets_svc
    from app.services import sources as sources_svc

    try:
        from app.demo import load_demo_catalogue
    except ImportError as exc:
        log.warning("no demo catalogue available (%s)", exc)
        return {"added": 0}
    with ctx.Session() as s:
        present = set(s.scalars(select(SourceTask.name)))
    t0 = time.perf_counter()
    added, queued = 0, 0
    demo = load_demo_catalogue()
    for src in demo:
        if src.name in present:
            continue
        if src.encoder != ctx.settings.base_encoder:
            log.warning("demo source %s was embedded with %s, the base encoder is %s: skipped",
                        src.name, src.encoder, ctx.settings.base_encoder)
            continue
        parsed = datasets_svc.Parsed("text", "demo", *_labels(src.labels), texts=list(src.texts),
                                     columns=["text", "label"])
        ds, _ = datasets_svc.store_parsed(ctx, parsed, src.name, meta={"demo": True})
        try:
            sources_svc.add_ready_source(ctx, name=src.name, dataset=ds, base_embeddings=src.base_embeddings,
                                         esm=src.esm, description=src.description, licence=src.licence,
                                         origin="demo", encoder=src.encoder)
        except Conflict:  # seeded concurrently by another process
            continue
        if src.esm is None and ctx.settings.train_demo_esms:
            _queue_demo_esm(ctx, src.name, ds)  # base embeddings now, the ESM as a visible job
            queued += 1
        added += 1
    if added:
        log.info("demo catalogue: %d source(s) added, %d ESM job(s) queued in %.2fs", added, queued,
                 time.perf_counter() - t0)
    return {"added": added, "queued": queued}


def _labels(raw):
    import numpy as np

    names = [str(v) for v in raw]
    classes, idx = np.unique(np.asarray(names), return_inverse=True)
    return idx.astype("int64").reshape(-1), [str(c) for c in classes]


def _queue_demo_esm(ctx: Context, name: str, ds) -> None:
    from app.db.models import SourceTask as ST
    from app.services import sources as sources_svc

    with ctx.Session.begin() as s:
        t = s.scalar(select(ST).where(ST.name == name))
        job = ctx.jobs.create(s, "train_esm", message=f"queued: ESM training for demo source {name}")
        t.job_id, t.status = job.id, "training"
        sid, job_id = t.id, job.id

    def run(progress):
        return sources_svc._train_job(ctx, sid, ds, True, {}, progress)

    def on_error(err):
        with ctx.Session.begin() as s:
            row = s.get(ST, sid)
            row.status, row.error = "ready", f"ESM training failed: {err}"  # still usable by divergences

    ctx.jobs.submit(job_id, run, on_error)
