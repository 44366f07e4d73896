"""Heavy work as bounded jobs, cancellation that stops the computation, and fault safety
(failed sources retried, disk full -> 507, doctor, ranking/delete races), on SQLite and PostgreSQL."""
from __future__ import annotations

import errno
import os
import threading
import time

import numpy as np
import pytest

from conftest import npz_bytes, upload, wait_job


def _npz(n=60, d=8, models=0, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"features": rng.normal(size=(n, d)), "labels": np.arange(n) % 3}
    for i in range(models):
        arrays[f"features_m{i:02d}"] = rng.normal(size=(n, d))
    return npz_bytes(**arrays)


@pytest.fixture
def jclient(make_client, db_url):
    def make(**settings):
        return make_client(database_url=db_url, **settings)
    return make


def _block(ctx, release: threading.Event, started: threading.Event | None = None):
    """A job that reports progress until released (or cancelled)."""
    with ctx.Session.begin() as s:
        job = ctx.jobs.create(s, "test", message="queued: blocking test job")
        job_id = job.id

    def fn(progress):
        if started is not None:
            started.set()
        while not release.wait(0.02):
            progress(0.5)
        return {"ok": True}

    return job_id, ctx.jobs.submit(job_id, fn)


def test_cancel_stops_the_computation(jclient):
    client = jclient()
    ctx = client.app.state.ctx
    release, started = threading.Event(), threading.Event()
    job_id, fut = _block(ctx, release, started)
    assert started.wait(10)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "running" and job["message"].startswith("running:")
    r = client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert fut.result(timeout=5) == {"error": fut.result()["error"]} and "cancelled" in fut.result()["error"]
    assert not ctx.jobs._running  # the thread left the computation
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    r = client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 409 and "already cancelled" in r.json()["detail"]
    assert client.delete("/v1/jobs/nope").status_code == 404
    listed = client.get("/v1/jobs", params={"status": "cancelled"}).json()["jobs"]
    assert [j["id"] for j in listed] == [job_id]
    assert client.get("/v1/jobs", params={"status": "bogus"}).status_code == 422
    release.set()


def test_npz_rankings_above_the_cost_threshold_are_jobs_and_cancellable(jclient):
    client = jclient(sync_cost_limit=1000)
    did = upload(client, _npz(n=400, d=32, models=30), "many.npz").json()["id"]
    r = client.post("/v1/rankings", json={"target": did, "candidates": "models",
                                         "estimators": ["logme", "hscore", "transrate", "gbc"]})
    assert r.status_code == 202, r.text
    ranking_id, job_id = r.json()["id"], r.json()["job"]
    c = client.delete(f"/v1/jobs/{job_id}")
    assert c.status_code in (200, 409)  # 409 only if it finished first
    t0 = time.monotonic()
    job = wait_job(client, job_id, 60)
    if c.status_code == 200:
        assert job["status"] == "cancelled"
        while client.app.state.ctx.jobs._running and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        assert not client.app.state.ctx.jobs._running  # the computation stopped
        from sqlalchemy import func, select

        from app.db.models import Score

        with client.app.state.ctx.Session() as s:  # a cancelled ranking stores nothing
            assert s.scalar(select(func.count()).select_from(Score)) == 0
        got = client.get(f"/v1/rankings/{ranking_id}").json()
        assert got["status"] == "failed" and "cancelled" in got["error"]
    listed = client.get("/v1/rankings", params={"target": did}).json()["rankings"]
    assert [x["id"] for x in listed] == [ranking_id]
    # a small one stays synchronous
    small = upload(client, _npz(n=30, d=4, seed=1), "small.npz").json()["id"]
    client2 = client
    ok = client2.post("/v1/rankings", json={"target": small, "candidates": "models", "estimators": ["logme"]})
    assert ok.status_code in (200, 202)


def test_queue_bounds_answer_429_with_retry_after(jclient):
    client = jclient(max_queued_jobs=2, sync_cost_limit=1)
    ctx = client.app.state.ctx
    release = threading.Event()
    blockers = [_block(ctx, release) for _ in range(2)]
    did = upload(client, _npz(), "t.npz").json()["id"]
    r = client.post("/v1/rankings", json={"target": did, "candidates": "models", "estimators": ["logme"]})
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) > 0 and "TRANSFERRANK_MAX_QUEUED_JOBS" in r.json()["detail"]
    assert client.get("/v1/rankings").json()["rankings"] == []  # nothing half-created
    release.set()
    for _, fut in blockers:
        fut.result(timeout=10)
    r = client.post("/v1/rankings", json={"target": did, "candidates": "models", "estimators": ["logme"]})
    assert r.status_code == 202 and wait_job(client, r.json()["job"])["status"] == "done"


def test_per_owner_bound(jclient):
    client = jclient(max_queued_jobs_per_owner=1, sync_cost_limit=1)
    ctx = client.app.state.ctx
    from app.services.jobs import requester

    release = threading.Event()
    token = requester.set("addr:testclient")
    try:
        _block(ctx, release)
    finally:
        requester.reset(token)
    did = upload(client, _npz(), "t.npz").json()["id"]
    r = client.post("/v1/rankings", json={"target": did, "candidates": "models", "estimators": ["logme"]})
    assert r.status_code == 429 and "TRANSFERRANK_MAX_QUEUED_JOBS_PER_OWNER" in r.json()["detail"]
    other = client.post("/v1/rankings", json={"target": did, "candidates": "models", "estimators": ["logme"]},
                        headers={"Authorization": "Bearer someone-else"})
    assert other.status_code != 429
    release.set()


def test_periodic_reaper_fails_jobs_of_a_dead_process(jclient):
    import datetime as dt

    from app.db.models import Job, utcnow

    client = jclient(reaper_seconds=1, job_stale_seconds=1)
    ctx = client.app.state.ctx
    with ctx.Session.begin() as s:
        job = Job(kind="ranking", status="running", progress=0.3, owner="dead", result={},
                  heartbeat_at=utcnow() - dt.timedelta(minutes=10))
        s.add(job)
        s.flush()
        job_id = job.id
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with ctx.Session() as s:
            if s.get(Job, job_id).status == "failed":
                break
        time.sleep(0.2)
    with ctx.Session() as s:  # reaped by the background thread, nobody read the job
        assert s.get(Job, job_id).status == "failed"


def test_failed_source_can_be_registered_again(jclient):
    from app.db.models import SourceTask

    client = jclient()
    ctx = client.app.state.ctx
    did = upload(client, _npz(n=30, d=50), "s.npz").json()["id"]
    with ctx.Session.begin() as s:
        s.add(SourceTask(name="retry-me", dataset_id=did, status="failed", base_encoder=ctx.settings.base_encoder,
                         error="the service stopped", esm_meta={}))
    r = client.post("/v1/sources", json={"dataset": did, "name": "retry-me"})
    assert r.status_code == 201, r.text
    assert r.json()["source"]["status"] == "ready"
    again = client.post("/v1/sources", json={"dataset": did, "name": "retry-me"})
    assert again.status_code == 409


def test_disk_full_is_507_and_delete_still_frees_space(jclient, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from app.services import datasets as datasets_svc
    from app.storage.blobs import BlobStore

    client = jclient()
    ctx = client.app.state.ctx
    keep = upload(client, _npz(seed=3), "keep.npz").json()["id"]
    real_put = BlobStore.put_bytes

    def full(self, data, ext):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(BlobStore, "put_bytes", full)
    r = upload(client, _npz(seed=4), "new.npz")
    assert r.status_code == 507 and "disk is full" in r.json()["detail"]
    assert not list(ctx.blobs.temp_files())
    # the database cannot journal the deletion until the reserve is released
    assert ctx.blobs.reserve_path.is_file()
    real_delete = datasets_svc._delete_dataset
    calls = []

    def delete_on_full_disk(ctx_, dataset_id, *rest):
        calls.append(dataset_id)
        if len(calls) == 1:
            raise OperationalError("DELETE", {}, Exception("database or disk is full"))
        return real_delete(ctx_, dataset_id, *rest)

    monkeypatch.setattr(datasets_svc, "_delete_dataset", delete_on_full_disk)
    r = client.delete(f"/v1/datasets/{keep}")
    assert r.status_code == 200 and r.json()["deleted"] is True and len(calls) == 2
    monkeypatch.setattr(BlobStore, "put_bytes", real_put)
    assert upload(client, _npz(seed=4), "new.npz").status_code == 201


def test_doctor_collects_temp_files_and_orphan_blobs(jclient, tmp_path):
    from app.services.doctor import check

    client = jclient()
    ctx = client.app.state.ctx
    did = upload(client, _npz(seed=5), "d.npz").json()["id"]
    orphan = ctx.blobs.put_bytes(b"left by a crash", "json")
    tmp = ctx.blobs.path(orphan).parent / ".tmp-crashed"
    tmp.write_bytes(b"half")
    young = check(ctx, repair=False)
    assert young["orphan_blobs"] == 0 and young["temp_files"] == 0  # too young: maybe a write in flight
    old = time.time() - 7200
    for p in (ctx.blobs.path(orphan), tmp):
        os.utime(p, (old, old))
    report = check(ctx, repair=False)
    assert report["orphan_blobs"] == 1 and report["temp_files"] == 1 and report["n_missing_blobs"] == 0
    fixed = check(ctx, repair=True)
    assert fixed["orphan_blobs_removed"] == 1
    assert not ctx.blobs.exists(orphan) and not tmp.exists()
    assert client.get(f"/v1/datasets/{did}").status_code == 200
    ds = client.get(f"/v1/datasets/{did}").json()
    assert ds["n_examples"] == 60 and check(ctx)["orphan_blobs"] == 0


def test_doctor_cli(tmp_path):
    import json
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.getcwd(), seed_demo="0", base_encoder="glove-6b-50d")
    env.pop("TRANSFERRANK_DATABASE_URL", None)
    out = subprocess.run([sys.executable, "-m", "app.cli", "doctor", "--data-dir", str(tmp_path / "d")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["orphan_blobs"] == 0
