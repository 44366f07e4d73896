"""Start-up work of a service process, done once before the first request or CLI command.

``open_context(settings)`` builds the ``Context`` and runs ``start(ctx)``: the data dir is
created, migrations are applied (``alembic upgrade head``), jobs left unfinished by an earlier
process are failed, the encoder catalogue is mirrored into SQL, the demo catalogue is seeded
(first start, idempotent) and the FAISS index is checked against SQL. ``warm_up(ctx)`` loads the
model candidates on the workers in the background (``transferrank serve`` does it by default).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
from sqlalchemy import select

from app.core.config import Settings
from app.core.errors import Conflict
from app.core.logging import get_logger, setup_logging
from app.core.status import SourceStatus
from app.db.models import PUBLIC_OWNER, Dataset, EncoderRow, SourceTask
from app.db.session import upgrade
from app.services.context import Context
from app.workers.base import WorkerBackend

log = get_logger("startup")


def open_context(settings: Settings | None = None, *, backend: WorkerBackend | None = None,
                 migrate: bool = True, seed: bool | None = None, prepared: bool = False) -> Context:
    """A started ``Context`` (see the module docstring); close it with ``ctx.close()``.

    ``prepared=True``: one of several API processes (``serve --workers N``) whose parent already
    ran the once-per-start work (migrations, failing an earlier process's jobs, housekeeping, the
    encoder mirror, the demo seed); this one only reaps jobs whose heartbeat is stale, so it never
    fails a sibling's running job, and loads the FAISS index."""
    settings = settings or Settings.from_env()
    setup_logging(settings.log_level)
    ctx = Context(settings, backend=backend)
    try:
        if prepared:
            ctx.jobs.reap()
            ctx.index.ensure()
            return ctx
        start(ctx, migrate=migrate, seed=seed)
    except BaseException:
        ctx.close()
        raise
    return ctx


def start(ctx: Context, *, migrate: bool = True, seed: bool | None = None) -> None:
    """Migrate, reap, mirror the encoders, seed the demo catalogue, check the FAISS index."""
    from app.services.sources import sync_encoders

    settings = ctx.settings
    if migrate:
        t0 = time.perf_counter()
        upgrade(settings.db_url, ctx.engine)
        log.info("database %s at head (%.2fs)", ctx.engine.url.render_as_string(hide_password=True),
                 time.perf_counter() - t0)
    ctx.jobs.reap(all_unfinished=settings.is_sqlite)
    try:  # crash leftovers: temp files, orphan blobs and scores (only ones older than an hour)
        from app.services.doctor import check as doctor

        doctor(ctx, repair=True)
    except Exception:  # never block the start over housekeeping
        log.exception("start-up doctor failed")
    sync_encoders(ctx)
    if settings.seed_demo if seed is None else seed:
        seed_demo(ctx)
        from app.services.models import seed_demo_models

        seed_demo_models(ctx)  # the small image models trained here (TorchScript)
    ctx.index.ensure()


def limit_api_threads(settings: Settings) -> int | None:
    """``serve`` with the local backend: an API process extracts features with torch on threads
    (the numerics run in worker processes); torch would take every core and a cached ranking
    request would queue behind it (p99 74 ms -> 42 ms at 100 req/s during a large job on 2 cores,
    bench/results/load_100.md). Leaves one core for request handling
    (``TRANSFERRANK_API_TORCH_THREADS``, default CPU count - 1, at least 1); Ray: unchanged."""
    if settings.ray_address:
        return None
    import torch

    n = settings.api_torch_threads or max(1, (os.cpu_count() or 1) - 1)
    torch.set_num_threads(int(n))
    return int(n)


def _warm_up_done(name: str, t0: float) -> Callable[[Future[Any]], None]:
    """The log line of one encoder's warm-up; a load cancelled by a stopping service is no error."""
    def cb(fut: Future[Any]) -> None:
        if fut.cancelled():
            log.info("encoder %s: warm-up cancelled (the service is stopping)", name)
            return
        exc = fut.exception()
        if exc is None:
            log.info("encoder %s ready (%.1fs)", name, time.perf_counter() - t0)
        else:
            log.warning("encoder %s failed to load: %s", name, exc)
    return cb


def warm_up(ctx: Context) -> None:
    """Load every enabled model candidate on the workers in the background, so the first ranking
    does not wait for it (the first use of a model2vec candidate distils it)."""
    with ctx.Session() as s:
        names = list(s.scalars(select(EncoderRow.name).where(EncoderRow.enabled.is_(True),
                                                             EncoderRow.status == "ready")))

    from app.services.models import warm_up_inputs, worker_encoder

    for name in names:
        t0 = time.perf_counter()
        enc = worker_encoder(ctx, name)  # a user model travels as its spec
        ctx.backend.submit_embed(enc, warm_up_inputs(enc)).add_done_callback(_warm_up_done(name, t0))


def seed_demo(ctx: Context) -> dict[str, int]:
    """Add the demo catalogue's sources that are not in SQL yet (idempotent)."""
    from app.services import datasets as datasets_svc
    from app.services import sources as sources_svc

    try:
        from app.demo import load_demo_catalogue
    except ImportError as exc:
        log.warning("no demo catalogue available (%s)", exc)
        return {"added": 0, "queued": 0}
    with ctx.Session() as s:
        present = set(s.scalars(select(SourceTask.name)))
    t0 = time.perf_counter()
    added, queued = 0, 0
    for src in load_demo_catalogue():
        if src.name in present:
            continue
        if src.encoder != ctx.settings.base_encoder:
            log.warning("demo source %s was embedded with %s, the base encoder is %s: skipped",
                        src.name, src.encoder, ctx.settings.base_encoder)
            continue
        parsed = datasets_svc.Parsed("text", "demo", *_labels(src.labels), texts=list(src.texts),
                                     columns=["text", "label"])
        ds, _ = datasets_svc.store_parsed(ctx, parsed, src.name, meta={"demo": True}, owner=PUBLIC_OWNER)
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


def _labels(raw: Sequence[Any]) -> tuple[np.ndarray, list[str]]:
    names = [str(v) for v in raw]
    classes, idx = np.unique(np.asarray(names), return_inverse=True)
    return idx.astype("int64").reshape(-1), [str(c) for c in classes]


def _queue_demo_esm(ctx: Context, name: str, ds: Dataset) -> None:
    from app.services import sources as sources_svc

    with ctx.Session.begin() as s:
        t = s.scalar(select(SourceTask).where(SourceTask.name == name))
        assert t is not None  # added just before, in this process
        job = ctx.jobs.create(s, "train_esm", message=f"queued: ESM training for demo source {name}",
                              owner=PUBLIC_OWNER)
        t.job_id, t.status = job.id, SourceStatus.TRAINING
        sid, job_id = t.id, job.id

    def run(progress: Any) -> dict[str, Any]:
        return sources_svc._train_job(ctx, sid, ds, True, {}, progress)

    def on_error(err: str) -> None:
        with ctx.Session.begin() as s:
            row = s.get(SourceTask, sid)
            if row is not None:
                row.status, row.error = SourceStatus.READY, f"ESM training failed: {err}"  # still usable by divergences

    ctx.jobs.submit(job_id, run, on_error)
