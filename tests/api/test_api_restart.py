"""Restart survival: datasets, cached scores and the FAISS index outlive the process; a deleted
or stale index file is rebuilt from SQL; jobs left unfinished by a dead process are failed."""
from __future__ import annotations

import datetime as dt

import numpy as np

from conftest import csv_bytes, make_texts, npz_bytes, rank, upload


def test_restart_keeps_datasets_scores_and_index(make_client, tmp_path):
    data = tmp_path / "shared-data"
    c1 = make_client(data)
    rng = np.random.default_rng(0)
    rebuilds_at_start = c1.app.state.ctx.index.rebuilds
    for i in range(3):
        arrays = npz_bytes(features=rng.normal(size=(25, 50)), labels=np.arange(25) % 2)
        did = upload(c1, arrays, f"s{i}.npz").json()["id"]
        assert c1.post("/v1/sources", json={"dataset": did, "name": f"src{i}"}).status_code == 201
    assert c1.app.state.ctx.index.rebuilds == rebuilds_at_start  # inserts are incremental, no rebuild
    tid = upload(c1, csv_bytes(*make_texts(30, 3)), "target.csv").json()["id"]
    first = rank(c1, {"target": tid, "candidates": "tasks", "estimators": ["semb"], "prefilter_k": 2})
    assert first["computed"] == 2
    index_file = c1.app.state.ctx.index.path
    assert index_file.exists()
    c1.__exit__(None, None, None)

    c2 = make_client(data)  # a new process on the same data dir
    assert tid in {d["id"] for d in c2.get("/v1/datasets").json()["datasets"]}
    ctx2 = c2.app.state.ctx
    assert ctx2.index.rebuilds == 0 and ctx2.index.describe()["sources"] == 3  # loaded, not rebuilt
    again = rank(c2, {"target": tid, "candidates": "tasks", "estimators": ["semb"], "prefilter_k": 2})
    assert again["computed"] == 0 and again["cached"] == 2
    assert [r["source"] for r in again["ranking"]] == [r["source"] for r in first["ranking"]]
    c2.__exit__(None, None, None)

    index_file.unlink()
    c3 = make_client(data)
    ctx3 = c3.app.state.ctx
    assert index_file.exists() and ctx3.index.rebuilds == 1 and ctx3.index.describe()["sources"] == 3
    third = rank(c3, {"target": tid, "candidates": "tasks", "estimators": ["semb"], "prefilter_k": 2})
    assert {r["source"] for r in third["ranking"]} == {r["source"] for r in first["ranking"]}

    # a stale index (SQL changed behind its back) is rebuilt on the next search
    from sqlalchemy import delete

    from app.db.models import SourceTask

    with ctx3.Session.begin() as s:
        s.execute(delete(SourceTask).where(SourceTask.name == "src0"))
    ctx3.index._index = None  # as after a restart
    hits = ctx3.index.search(np.ones(50, dtype=np.float32) / np.sqrt(50), 10)
    assert len(hits) == 2 and ctx3.index.rebuilds == 2


def test_unfinished_jobs_of_a_dead_process_are_failed_on_start(make_client, tmp_path):
    from app.db.models import Job, Ranking, utcnow

    data = tmp_path / "d"
    c1 = make_client(data)
    ctx = c1.app.state.ctx
    tid = upload(c1, csv_bytes(*make_texts(20, 2)), "t.csv").json()["id"]
    with ctx.Session.begin() as s:
        job = Job(kind="ranking", status="running", progress=0.4, owner="dead-process",
                  heartbeat_at=utcnow() - dt.timedelta(hours=1), result={})
        s.add(job)
        s.flush()
        s.add(Ranking(target_id=tid, candidates="models", request={}, status="running", job_id=job.id))
        job_id = job.id
    c1.__exit__(None, None, None)
    c2 = make_client(data)
    job = c2.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and "service stopped" in job["error"]
    from sqlalchemy import select

    with c2.app.state.ctx.Session() as s:
        r = s.scalar(select(Ranking).where(Ranking.job_id == job_id))
    assert r.status == "failed"


def test_stale_running_job_is_reaped_when_read(client):
    from app.db.models import Job, utcnow

    ctx = client.app.state.ctx
    with ctx.Session.begin() as s:
        job = Job(kind="ranking", status="running", progress=0.1, owner="elsewhere",
                  heartbeat_at=utcnow() - dt.timedelta(seconds=ctx.settings.job_stale_seconds + 5), result={})
        s.add(job)
        s.flush()
        job_id = job.id
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "failed"
