"""Background jobs: a bounded pool of daemon threads that runs job functions and records their
progress in SQL.

A job function gets a ``progress(fraction, message=None)`` callback and returns a JSON-able
result dict. Progress writes are throttled; a heartbeat thread stamps running jobs and, every
``TRANSFERRANK_REAPER_SECONDS``, reaps: ``reap`` fails jobs whose heartbeat is older than
``job_stale_seconds`` (also on start and when a job is read) — in embedded SQLite mode, where
one process owns the data dir, every unfinished job of an earlier process is failed at start.

Bounds: at most ``TRANSFERRANK_MAX_QUEUED_JOBS`` unfinished jobs in the database and
``TRANSFERRANK_MAX_QUEUED_JOBS_PER_OWNER`` per owner (the jobs' ``tenant``; for the default
owner of open mode, per requester -- API key or client address -- in this process); more ->
``Busy`` (429 with ``Retry-After``).

Cancellation (``cancel``) is cooperative: the job's row turns ``cancelled`` at once, and the
next progress report of the computation (every score of a ranking, every batch of an
embedding or a training step) raises ``Cancelled``, which ends it. A cancellation made by
another process is seen the same way: a progress write that finds the row no longer
``running`` raises ``Cancelled``. ``shutdown`` cancels what is left and waits at most
``TRANSFERRANK_SHUTDOWN_SECONDS``; the pool's threads are daemons, so a computation that never
reports progress cannot hold the process.
"""
from __future__ import annotations

import builtins
import contextvars
import datetime as dt
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.core import memory
from app.core.config import limits as current_limits
from app.core.errors import Busy, Invalid, NotFound, ServiceError
from app.core.logging import get_logger
from app.core.progress import ProgressFn
from app.db.models import DEFAULT_OWNER, Dataset, Job, Ranking, SourceTask, iso, utcnow
from app.db.session import rowcount
from app.services.tenancy import can_read, visible
from app.workers.base import Cancelled

if TYPE_CHECKING:
    from app.services.context import Context

log = get_logger("jobs")

JobFn = Callable[[ProgressFn], dict[str, Any]]
ErrorHook = Callable[[str], None]

HEARTBEAT_SECONDS = 10.0
#: After a job during which the process grew by this much, its freed memory is given back to the OS.
RELEASE_AFTER_BYTES = 64 * 2**20
UNFINISHED = ("queued", "running")
STATUSES = ("queued", "running", "done", "failed", "cancelled")
#: who asked for the work being queued (set per request by ``app.api.limits``): the per-owner bound
requester: contextvars.ContextVar[str | None] = contextvars.ContextVar("transferrank_requester", default=None)


def _aware(t: dt.datetime | None) -> dt.datetime | None:
    if t is not None and t.tzinfo is None:  # SQLite returns naive datetimes
        return t.replace(tzinfo=dt.UTC)
    return t


def job_dict(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "progress": round(float(job.progress or 0.0), 4),
        "message": job.message,
        "error": job.error,
        "result": job.result or {},
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }


class JobRunner:
    def __init__(self, ctx: Context, max_workers: int = 2):
        self.ctx = ctx
        self.limits = current_limits(ctx.settings)
        self._queue: queue.Queue[tuple[str, JobFn, ErrorHook | None, Future[Any]] | None] = queue.Queue()
        self._threads = [threading.Thread(target=self._worker, name=f"transferrank-job-{i}", daemon=True)
                         for i in range(max_workers)]
        self._active: set[str] = set()
        self._running: set[str] = set()
        self._cancelled: set[str] = set()
        self._owners: dict[str, str] = {}  # unfinished job -> requester (this process)
        self._lock = threading.Lock()
        self._last_write: dict[str, tuple[float, float, str | None]] = {}  # time, fraction, message
        self._stop = threading.Event()
        for t in self._threads:
            t.start()
        self._hb = threading.Thread(target=self._heartbeat_loop, name="transferrank-heartbeat", daemon=True)
        self._hb.start()

    # ------------------------------------------------------------------ create / submit
    def create(self, session: Session, kind: str, message: str | None = None, owner: str = DEFAULT_OWNER, *,
               bounded: bool = True) -> Job:
        """A queued job working for ``owner`` (who alone, with the public catalogue's jobs, may read
        it); ``Busy`` when the queue bounds are reached (``bounded=False``: internal work such as
        the demo catalogue's ESMs, never refused)."""
        who = requester.get() if owner == DEFAULT_OWNER else None
        if bounded:
            self._check_bounds(session, who, owner)
        job = Job(kind=kind, status="queued", progress=0.0, message=message, owner=self.ctx.instance_id,
                  tenant=owner, heartbeat_at=utcnow(), result={})
        session.add(job)
        session.flush()
        if who is not None:
            with self._lock:
                self._owners[job.id] = who
        return job

    def _check_bounds(self, session: Session, who: str | None, owner: str) -> None:
        lim = self.limits
        mine = 0
        if who is not None:
            with self._lock:
                mine = sum(1 for o in self._owners.values() if o == who)
        elif owner != DEFAULT_OWNER:
            mine = int(session.scalar(select(func.count()).select_from(Job).where(
                Job.tenant == owner, Job.status.in_(UNFINISHED))) or 0)
        if mine:
            if mine >= lim.max_queued_jobs_per_owner:
                raise Busy(f"you already have {mine} unfinished jobs, the most one client may have "
                           f"(TRANSFERRANK_MAX_QUEUED_JOBS_PER_OWNER={lim.max_queued_jobs_per_owner}); wait for "
                           "one to finish (GET /v1/jobs?status=running) or cancel one (DELETE /v1/jobs/ID)",
                           retry_after=10)
        total = int(session.scalar(select(func.count()).select_from(Job).where(Job.status.in_(UNFINISHED))) or 0)
        if total >= lim.max_queued_jobs:
            raise Busy(f"the service has {total} unfinished jobs, its limit "
                       f"(TRANSFERRANK_MAX_QUEUED_JOBS={lim.max_queued_jobs}); retry in a minute", retry_after=30)

    def submit(self, job_id: str, fn: JobFn, on_error: ErrorHook | None = None) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._lock:
            self._active.add(job_id)
        if self._stop.is_set():
            self._abandon(job_id, "the service is stopping; repeat the request when it is back")
            fut.set_result({"error": "stopping"})
            return fut
        self._queue.put((job_id, fn, on_error, fut))
        return fut

    def run_inline(self, job_id: str, fn: JobFn, on_error: ErrorHook | None = None) -> dict[str, Any]:
        with self._lock:
            self._active.add(job_id)
        return self._run(job_id, fn, on_error)

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job_id, fn, on_error, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(self._run(job_id, fn, on_error))
            except BaseException as exc:  # noqa: BLE001 - recorded on the job by _run already
                fut.set_exception(exc)

    # ------------------------------------------------------------------ execution
    def _set(self, job_id: str, **values: Any) -> int:
        with self.ctx.Session.begin() as s:
            return rowcount(s.execute(update(Job).where(Job.id == job_id).values(**values)))

    def _set_if(self, job_id: str, statuses: tuple[str, ...], **values: Any) -> bool:
        """Update the job only while its status is one of ``statuses`` (no lost cancellation)."""
        with self.ctx.Session.begin() as s:
            return rowcount(s.execute(update(Job).where(Job.id == job_id, Job.status.in_(statuses))
                                      .values(**values))) > 0

    def is_cancelled(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._cancelled

    def check_cancelled(self, job_id: str) -> None:
        if self.is_cancelled(job_id):
            raise Cancelled(f"job {job_id} was cancelled")

    def progress(self, job_id: str, fraction: float, message: str | None = None) -> None:
        self.check_cancelled(job_id)
        fraction = min(max(float(fraction), 0.0), 1.0)
        now = time.monotonic()
        last_t, last_p, last_m = self._last_write.get(job_id, (0.0, -1.0, None))
        if (message is None or message == last_m) and fraction - last_p < 0.01 and now - last_t < 1.0:
            return
        self._last_write[job_id] = (now, fraction, message if message is not None else last_m)
        values: dict[str, Any] = {"progress": fraction, "heartbeat_at": utcnow()}
        if message is not None:
            values["message"] = message
        try:
            still = self._set_if(job_id, ("running",), **values)
        except Exception:  # progress is best effort; never kill the job over it
            log.exception("could not record progress of job %s", job_id)
            return
        if not still:  # cancelled (or reaped) by another process meanwhile
            with self._lock:
                self._cancelled.add(job_id)
            raise Cancelled(f"job {job_id} is no longer running")

    def _run(self, job_id: str, fn: JobFn, on_error: ErrorHook | None) -> dict[str, Any]:
        t0 = time.perf_counter()
        rss0 = memory.rss_bytes()
        try:
            with self.ctx.Session.begin() as s:
                job = s.get(Job, job_id)
                message = (job.message or "") if job is not None else ""
                if message.startswith("queued: "):
                    message = "running: " + message[len("queued: "):]
                started = rowcount(s.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(
                    status="running", started_at=utcnow(), heartbeat_at=utcnow(), owner=self.ctx.instance_id,
                    message=message or None))) > 0
            if not started:  # cancelled (or reaped) while queued
                log.info("job %s not started: no longer queued", job_id)
                if on_error is not None:
                    self._call_hook(job_id, on_error, "the job was cancelled before it started")
                return {"error": "cancelled"}
            with self._lock:
                self._running.add(job_id)
            log.info("job %s started", job_id)
            def report(fraction: float, message: str | None = None, /) -> None:
                self.progress(job_id, fraction, message)

            try:
                result = fn(report) or {}
                self.check_cancelled(job_id)
            except BaseException as exc:  # noqa: BLE001 - every failure is recorded on the job
                cancelled = isinstance(exc, Cancelled) or self.is_cancelled(job_id)
                if cancelled:
                    error = "the job was cancelled (DELETE /v1/jobs/{id}); repeat the request to run it again" \
                        .replace("{id}", job_id)
                    self._set_if(job_id, UNFINISHED + ("cancelled",), status="cancelled", error=error,
                                 finished_at=utcnow(), message="cancelled")
                else:
                    error = _error_text(exc)
                    if not isinstance(exc, (ServiceError, ValueError)):
                        log.error("job %s crashed: %s", job_id, error, exc_info=exc)
                    self._set_if(job_id, UNFINISHED, status="failed", error=error, finished_at=utcnow())
                if on_error is not None:
                    self._call_hook(job_id, on_error, error)
                log.info("job %s %s after %.2fs: %s", job_id, "cancelled" if cancelled else "failed",
                         time.perf_counter() - t0, error)
                if not isinstance(exc, Exception):
                    raise
                return {"error": error}
            result = dict(result, seconds=round(time.perf_counter() - t0, 3))
            self._set_if(job_id, ("running",), status="done", progress=1.0, result=result, finished_at=utcnow(),
                         message="done")
            log.info("job %s done in %.2fs", job_id, result["seconds"])
            return result
        finally:
            with self._lock:
                self._active.discard(job_id)
                self._running.discard(job_id)
                self._cancelled.discard(job_id)
                self._owners.pop(job_id, None)
            self._last_write.pop(job_id, None)
            self._release_memory(job_id, rss0)

    @staticmethod
    def _release_memory(job_id: str, rss0: int | None) -> None:
        """Give a large job's freed memory back to the OS (``app.core.memory.release``): without it
        the process stays at the job's peak RSS. Only after a job during which the process grew by
        ``RELEASE_AFTER_BYTES`` or more: the full garbage collection costs ~1 s in a large process,
        too much after every small job."""
        try:
            sizes = memory.release_if_grown(rss0, RELEASE_AFTER_BYTES)
            if sizes is not None:
                before, after = sizes
                if after is not None:
                    log.info("job %s: RSS %.0f MB -> %.0f MB after releasing memory", job_id, before / 2**20,
                             after / 2**20)
        except Exception:  # never fail a finished job over housekeeping
            log.exception("could not release memory after job %s", job_id)

    @staticmethod
    def _call_hook(job_id: str, hook: ErrorHook, error: str) -> None:
        try:
            hook(error)
        except Exception:
            log.exception("error hook of job %s failed", job_id)

    def _abandon(self, job_id: str, error: str) -> None:
        try:
            self._set_if(job_id, UNFINISHED, status="failed", error=error, finished_at=utcnow())
        finally:
            with self._lock:
                self._active.discard(job_id)
                self._owners.pop(job_id, None)

    # ------------------------------------------------------------------ cancelling / listing
    def cancel(self, job_id: str, owner: str | None = None, admin: bool = False) -> dict[str, Any]:
        """Cancel a queued or running job (``cancelled`` at once; the computation stops at its next
        progress report). Another owner's job is 404; a public catalogue job needs ``admin``; a
        finished job is answered 409."""
        with self.ctx.Session.begin() as s:
            job = s.get(Job, job_id)
            if job is None or not can_read(job.tenant, owner):
                raise NotFound(f"no job with id {job_id!r}")
            if owner is not None and job.tenant != owner and not admin:
                from app.core.errors import Forbidden

                raise Forbidden("this job works for the public catalogue, which only an admin key may change")
            if job.status not in UNFINISHED:
                from app.core.errors import Conflict

                raise Conflict(f"job {job_id} is already {job.status}; only queued or running jobs can be cancelled")
            job.status, job.finished_at, job.message = "cancelled", utcnow(), "cancelled"
            job.error = f"the job was cancelled (DELETE /v1/jobs/{job_id}); repeat the request to run it again"
            for r in s.scalars(select(Ranking).where(Ranking.job_id == job_id, Ranking.status != "done")):
                r.status, r.error = "failed", job.error
            self._release_sources(s, job)
        with self._lock:
            self._cancelled.add(job_id)
            self._owners.pop(job_id, None)
        log.info("job %s cancelled", job_id)
        return self.get(job_id, owner)

    def cancel_for_dataset(self, session: Session, dataset_id: str) -> list[str]:
        """Inside the caller's transaction: cancel the unfinished ranking jobs of a dataset."""
        ids: list[str | None] = list(session.scalars(select(Ranking.job_id).join(Job, Job.id == Ranking.job_id)
                                   .where(Ranking.target_id == dataset_id, Job.status.in_(UNFINISHED))))
        if ids:
            session.execute(update(Job).where(Job.id.in_(ids), Job.status.in_(UNFINISHED)).values(
                status="cancelled", finished_at=utcnow(), message="cancelled",
                error="the target dataset was deleted"))
            with self._lock:
                self._cancelled.update(i for i in ids if i is not None)
        return [i for i in ids if i is not None]

    def list(self, status: str | None = None, limit: int = 100, offset: int = 0,
             ids: builtins.list[str] | None = None, owner: str | None = None) -> builtins.list[dict[str, Any]]:
        """Jobs ``owner`` may read, newest first (``owner=None``: all)."""
        if status is not None and status not in STATUSES:
            raise Invalid(f"status must be one of {', '.join(STATUSES)}, got {status[:40]!r}")
        self.reap()
        with self.ctx.Session() as s:
            q = select(Job).where(visible(Job.tenant, owner)).order_by(Job.created_at.desc(), Job.id)
            if status is not None:
                q = q.where(Job.status == status)
            if ids is not None:
                q = q.where(Job.id.in_(ids))
            return [job_dict(j) for j in s.scalars(q.limit(limit).offset(offset))]

    def _heartbeat_loop(self) -> None:
        last_reap = time.monotonic()
        beat = min(HEARTBEAT_SECONDS, max(1.0, self.limits.reaper_seconds / 2))
        while not self._stop.wait(beat):
            with self._lock:
                active = list(self._active)  # queued ones too: they are alive in this process's queue
            if active:
                try:
                    with self.ctx.Session.begin() as s:
                        s.execute(update(Job).where(Job.id.in_(active), Job.status.in_(UNFINISHED))
                                  .values(heartbeat_at=utcnow()))
                except Exception:
                    log.exception("heartbeat failed")
            if time.monotonic() - last_reap >= self.limits.reaper_seconds:
                last_reap = time.monotonic()
                try:
                    self.reap()
                except Exception:
                    log.exception("periodic reaper failed")

    # ------------------------------------------------------------------ reading / reaping
    def get(self, job_id: str, owner: str | None = None) -> dict[str, Any]:
        """The job, if ``owner`` may read it (its own or a public catalogue job); None: internal, any."""
        self.reap(job_ids=[job_id])
        with self.ctx.Session() as s:
            job = s.get(Job, job_id)
            if job is None or not can_read(job.tenant, owner):
                raise NotFound(f"no job with id {job_id!r}")
            return job_dict(job)

    def wait(self, job_id: str, timeout: float = 600.0, poll: float = 0.05) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job["status"] in ("done", "failed", "cancelled") or time.monotonic() > deadline:
                return job
            time.sleep(poll)

    def reap(self, *, all_unfinished: bool = False, job_ids: builtins.list[str] | None = None) -> int:
        """Fail unfinished jobs nobody is running any more; returns how many were failed."""
        cutoff = utcnow() - dt.timedelta(seconds=self.ctx.settings.job_stale_seconds)
        with self._lock:
            mine = set(self._active)
        with self.ctx.Session.begin() as s:
            q = select(Job).where(Job.status.in_(("queued", "running")))
            if job_ids is not None:
                q = q.where(Job.id.in_(job_ids))
            if not all_unfinished:
                q = q.where(or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
            stale = [j for j in s.scalars(q.with_for_update(skip_locked=True)
                                          if not self.ctx.settings.is_sqlite else q) if j.id not in mine]
            for job in stale:
                job.status = "failed"
                job.finished_at = utcnow()
                job.error = (
                    "the service stopped while this job was unfinished (no heartbeat since "
                    f"{iso(_aware(job.heartbeat_at)) or 'creation'}); "
                    "repeat the request to run it again"
                )
                for r in s.scalars(select(Ranking).where(Ranking.job_id == job.id, Ranking.status != "done")):
                    r.status, r.error = "failed", job.error
                self._release_sources(s, job)
        if stale:
            log.warning("reaped %d stale job(s): %s", len(stale), ", ".join(j.id for j in stale))
        return len(stale)

    @staticmethod
    def _release_sources(session: Session, job: Job) -> None:
        """Sources trained by ``job`` stop being ``pending`` / ``training``: a source whose base
        embeddings exist stays usable (divergences) without an ESM; otherwise it is ``failed``
        (and may be registered again)."""
        for t in session.scalars(select(SourceTask).where(SourceTask.job_id == job.id,
                                                          SourceTask.status.in_(("pending", "training")))):
            embedded = session.scalar(select(Dataset.task_embedding_blob).where(Dataset.id == t.dataset_id))
            t.status = "ready" if embedded else "failed"
            t.error = job.error

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop taking jobs, cancel the queued and running ones, and wait at most ``timeout``
        seconds (default ``TRANSFERRANK_SHUTDOWN_SECONDS``) for the running ones to stop."""
        self._stop.set()
        timeout = float(self.limits.shutdown_seconds if timeout is None else timeout)
        pending = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                pending.append(item)
        for job_id, _fn, on_error, fut in pending:
            self._abandon(job_id, "the service stopped before this job started; repeat the request")
            if on_error is not None:
                self._call_hook(job_id, on_error, "the service stopped before this job started; repeat the request")
            fut.cancel()
        with self._lock:
            running = set(self._running)
            self._cancelled.update(running)
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            deadline = time.monotonic() + timeout
            for t in self._threads:
                t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = set(self._running)
        for job_id in left:  # still computing without reporting progress: fail it, the thread is a daemon
            try:
                self._set_if(job_id, UNFINISHED, status="failed", finished_at=utcnow(),
                             error="the service stopped while this job was running; repeat the request")
            except Exception:
                log.exception("could not record the end of job %s", job_id)
        if left:
            log.warning("stopped with %d job(s) still computing: %s", len(left), ", ".join(sorted(left)))


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ServiceError):
        return exc.detail
    if isinstance(exc, ValueError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "the job needed more memory than the server could give; use fewer examples or candidates"
    if isinstance(exc, FileNotFoundError) and "blob" in str(exc):
        return "an item this job needed was deleted meanwhile; repeat the request"
    try:
        from sqlalchemy.exc import IntegrityError

        if isinstance(exc, IntegrityError):
            return "an item this job needed was deleted or changed meanwhile; repeat the request"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, OSError) and getattr(exc, "errno", None) in (28, 122):
        return "the server's disk is full; free space (delete datasets or sources) and repeat the request"
    return f"{type(exc).__name__}: {exc}"


def list_rankings(ctx: Context, target: str | None = None, limit: int = 100, offset: int = 0,
                  owner: str | None = None) -> list[dict[str, Any]]:
    """Rankings ``owner`` may read, newest first, optionally of one target dataset (``GET /v1/rankings``)."""
    from app.services.rankings import ranking_dict

    with ctx.Session() as s:
        q = select(Ranking).where(visible(Ranking.owner, owner)).order_by(Ranking.created_at.desc(), Ranking.id)
        if target is not None:
            q = q.where(Ranking.target_id == target)
        rows = list(s.scalars(q.limit(limit).offset(offset)))
    job_ids = [r.job_id for r in rows if r.job_id and r.status != "done"]
    jobs = {j["id"]: j for j in ctx.jobs.list(ids=job_ids, limit=len(job_ids) or 1)} if job_ids else {}
    out = []
    for r in rows:
        d = ranking_dict(r, jobs.get(r.job_id))
        d.pop("ranking", None)  # the list is a summary; GET /v1/rankings/{id} has the ranking
        d.pop("details", None)
        out.append(d)
    return out
