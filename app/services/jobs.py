"""Background jobs: a bounded thread pool that runs job functions and records their progress in SQL.

A job function gets a ``progress(fraction, message=None)`` callback and returns a JSON-able
result dict. Progress writes are throttled; a heartbeat thread stamps running jobs so a job is
never left ``running`` forever: ``reap`` (on start, and lazily when a job is read) fails jobs
whose heartbeat is older than ``job_stale_seconds`` — in embedded SQLite mode, where one process
owns the data dir, every unfinished job of an earlier process is failed at start.
"""
from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.core.errors import NotFound, ServiceError
from app.core.logging import get_logger
from app.core.progress import ProgressFn
from app.core.status import FINISHED, UNFINISHED, JobStatus, RankingStatus, SourceStatus
from app.db.models import DEFAULT_OWNER, Dataset, Job, Ranking, SourceTask, iso, utcnow
from app.services.tenancy import can_read

if TYPE_CHECKING:
    from app.services.context import Context

log = get_logger("jobs")

JobFn = Callable[[ProgressFn], dict[str, Any]]
ErrorHook = Callable[[str], None]

HEARTBEAT_SECONDS = 10.0


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
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="transferrank-job")
        self._active: set[str] = set()
        self._lock = threading.Lock()
        self._last_write: dict[str, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._hb = threading.Thread(target=self._heartbeat_loop, name="transferrank-heartbeat", daemon=True)
        self._hb.start()

    # ------------------------------------------------------------------ create / submit
    def create(self, session: Session, kind: str, message: str | None = None, owner: str = DEFAULT_OWNER) -> Job:
        """A queued job working for ``owner`` (who alone, with the public catalogue's jobs, may read it)."""
        job = Job(kind=kind, status=JobStatus.QUEUED, progress=0.0, message=message, owner=self.ctx.instance_id,
                  tenant=owner, heartbeat_at=utcnow(), result={})
        session.add(job)
        session.flush()
        return job

    def submit(self, job_id: str, fn: JobFn, on_error: ErrorHook | None = None) -> Future[Any]:
        with self._lock:
            self._active.add(job_id)
        return self._pool.submit(self._run, job_id, fn, on_error)

    def run_inline(self, job_id: str, fn: JobFn, on_error: ErrorHook | None = None) -> dict[str, Any]:
        with self._lock:
            self._active.add(job_id)
        return self._run(job_id, fn, on_error)

    # ------------------------------------------------------------------ execution
    def _set(self, job_id: str, **values: Any) -> None:
        with self.ctx.Session.begin() as s:
            s.execute(update(Job).where(Job.id == job_id).values(**values))

    def progress(self, job_id: str, fraction: float, message: str | None = None) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        now = time.monotonic()
        last_t, last_p = self._last_write.get(job_id, (0.0, -1.0))
        if message is None and fraction - last_p < 0.01 and now - last_t < 1.0:
            return
        self._last_write[job_id] = (now, fraction)
        values: dict[str, Any] = {"progress": fraction, "heartbeat_at": utcnow()}
        if message is not None:
            values["message"] = message
        try:
            self._set(job_id, **values)
        except Exception:  # progress is best effort; never kill the job over it
            log.exception("could not record progress of job %s", job_id)

    def _run(self, job_id: str, fn: JobFn, on_error: ErrorHook | None) -> dict[str, Any]:
        t0 = time.perf_counter()
        self._set(job_id, status=JobStatus.RUNNING, started_at=utcnow(), heartbeat_at=utcnow(),
                  owner=self.ctx.instance_id)
        log.info("job %s started", job_id)
        try:
            result = fn(lambda p, message=None: self.progress(job_id, p, message)) or {}
        except BaseException as exc:  # noqa: BLE001 - every failure is recorded on the job
            if isinstance(exc, (ServiceError, ValueError)):
                error = str(getattr(exc, "detail", exc))
            else:
                error = f"{type(exc).__name__}: {exc}"
                log.exception("job %s crashed", job_id)
            self._set(job_id, status=JobStatus.FAILED, error=error, finished_at=utcnow())
            if on_error is not None:
                try:
                    on_error(error)
                except Exception:
                    log.exception("error hook of job %s failed", job_id)
            log.info("job %s failed after %.2fs: %s", job_id, time.perf_counter() - t0, error)
            if not isinstance(exc, Exception):
                raise
            return {"error": error}
        finally:
            with self._lock:
                self._active.discard(job_id)
            self._last_write.pop(job_id, None)
        result = dict(result, seconds=round(time.perf_counter() - t0, 3))
        self._set(job_id, status=JobStatus.DONE, progress=1.0, result=result, finished_at=utcnow(), message="done")
        log.info("job %s done in %.2fs", job_id, result["seconds"])
        return result

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with self._lock:
                active = list(self._active)
            if not active:
                continue
            try:
                with self.ctx.Session.begin() as s:
                    s.execute(update(Job).where(Job.id.in_(active), Job.status == JobStatus.RUNNING)
                              .values(heartbeat_at=utcnow()))
            except Exception:
                log.exception("heartbeat failed")

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
            if job["status"] in FINISHED or time.monotonic() > deadline:
                return job
            time.sleep(poll)

    def reap(self, *, all_unfinished: bool = False, job_ids: list[str] | None = None) -> int:
        """Fail unfinished jobs nobody is running any more; returns how many were failed."""
        cutoff = utcnow() - dt.timedelta(seconds=self.ctx.settings.job_stale_seconds)
        with self._lock:
            mine = set(self._active)
        with self.ctx.Session.begin() as s:
            q = select(Job).where(Job.status.in_(UNFINISHED))
            if job_ids is not None:
                q = q.where(Job.id.in_(job_ids))
            if not all_unfinished:
                q = q.where(or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
            stale = [j for j in s.scalars(q) if j.id not in mine]
            for job in stale:
                job.status = JobStatus.FAILED
                job.finished_at = utcnow()
                job.error = (
                    "the service stopped while this job was unfinished (no heartbeat since "
                    f"{iso(_aware(job.heartbeat_at)) or 'creation'}); "
                    "repeat the request to run it again"
                )
                for r in s.scalars(select(Ranking).where(Ranking.job_id == job.id,
                                                         Ranking.status != RankingStatus.DONE)):
                    r.status, r.error = RankingStatus.FAILED, job.error
                unfinished = (SourceStatus.PENDING, SourceStatus.TRAINING)
                for t in s.scalars(select(SourceTask).where(SourceTask.job_id == job.id,
                                                            SourceTask.status.in_(unfinished))):
                    # a source whose base embeddings exist stays usable (divergences), just without ESM
                    embedded = s.scalar(select(Dataset.task_embedding_blob).where(Dataset.id == t.dataset_id))
                    t.status = SourceStatus.READY if embedded else SourceStatus.FAILED
                    t.error = job.error
        if stale:
            log.warning("reaped %d stale job(s): %s", len(stale), ", ".join(j.id for j in stale))
        return len(stale)

    def shutdown(self, wait: bool = True) -> None:
        self._stop.set()
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
