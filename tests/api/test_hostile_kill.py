"""``kill -9`` a real ``transferrank serve`` mid-upload, mid-ranking and mid-ESM-training; the
restarted server has lost nothing it acknowledged, runs nothing left over, and the same
request completes (SQLite and PostgreSQL)."""
from __future__ import annotations

import http.client
import io
import os
import signal
import time

import numpy as np
import pytest

from bench.attacks import _fresh_pg_schema, start_server, stop_server
from conftest import PG_URL, csv_bytes, make_texts

ENV = {"TRANSFERRANK_BASE_ENCODER": "minilm-l6", "TRANSFERRANK_JOB_STALE_SECONDS": "4",
       "TRANSFERRANK_REAPER_SECONDS": "2", "TRANSFERRANK_SYNC_COST_LIMIT": "1"}


def _heavy_npz() -> bytes:
    rng = np.random.default_rng(0)
    arrays = {"features": rng.normal(size=(1500, 48)), "labels": np.arange(1500) % 4}
    for i in range(40):
        arrays[f"features_m{i:02d}"] = rng.normal(size=(1500, 48))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _wait(fn, timeout: float, what: str, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = fn()
        if out:
            return out
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def _kill(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the server and anything it started
    proc.wait(30)


def _job(client, job_id):
    return client.get(f"/v1/jobs/{job_id}").json()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request):
    if request.param == "sqlite":
        yield None
        return
    if not PG_URL:
        pytest.skip("TEST_DATABASE_URL is not set")
    url, drop = _fresh_pg_schema(PG_URL)
    yield url
    drop()


@pytest.mark.slow
def test_kill_9_mid_upload_ranking_and_training(tmp_path, database):
    import httpx

    data = tmp_path / "data"
    proc, url = start_server(data, database, ENV)
    try:
        c = httpx.Client(base_url=url, timeout=120)
        kept = c.post("/v1/datasets", files={"file": ("kept.csv", csv_bytes(*make_texts(40, 2)))})
        assert kept.status_code == 201
        kept = kept.json()

        # -- mid-upload: half of a 6 MB body sent, then kill -9
        body = csv_bytes(*make_texts(60_000, 3, seed=7))
        boundary = "xxBOUNDARYxx"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.csv\"\r\n"
                "Content-Type: text/csv\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        host, port = url.split("//")[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.putrequest("POST", "/v1/datasets")
        conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        conn.putheader("Content-Length", str(len(head) + len(body) + len(tail)))
        conn.endheaders()
        conn.send(head + body[: len(body) // 2])
        time.sleep(0.5)
        _kill(proc)
        conn.close()
        proc, url = start_server(data, database, ENV)
        c = httpx.Client(base_url=url, timeout=120)
        listed = c.get("/v1/datasets").json()["datasets"]
        assert [d["id"] for d in listed] == [kept["id"]]  # acknowledged kept, unacknowledged absent
        assert c.get(f"/v1/datasets/{kept['id']}").json()["sha256"] == kept["sha256"]
        again = c.post("/v1/datasets", files={"file": ("big.csv", body)})
        assert again.status_code == 201, again.text  # the same request completes

        # -- mid-ranking: a ranking job computing 200 scores
        did = c.post("/v1/datasets", files={"file": ("heavy.npz", _heavy_npz())}).json()["id"]
        request = {"target": did, "candidates": "models", "estimators": ["logme", "hscore", "transrate", "gbc", "sfda"]}
        r = c.post("/v1/rankings", json=request)
        assert r.status_code == 202, r.text
        job_id, ranking_id = r.json()["job"], r.json()["id"]
        _wait(lambda: _job(c, job_id)["status"] == "running" and _job(c, job_id)["progress"] > 0.02, 120,
              "the ranking job to run")
        _kill(proc)
        proc, url = start_server(data, database, ENV)
        c = httpx.Client(base_url=url, timeout=120)
        job = _wait(lambda: (j := _job(c, job_id))["status"] not in ("queued", "running") and j, 60,
                    "the dead ranking job to be reaped")
        assert job["status"] == "failed" and "repeat the request" in job["error"]
        assert c.get(f"/v1/rankings/{ranking_id}").json()["status"] == "failed"
        r = c.post("/v1/rankings", json=request)
        assert r.status_code == 202
        done = _wait(lambda: (j := _job(c, r.json()["job"]))["status"] in ("done", "failed") and j, 300,
                     "the repeated ranking")
        assert done["status"] == "done", done
        assert len(c.get(f"/v1/rankings/{r.json()['id']}").json()["ranking"]) == 10

        # -- mid-ESM-training
        sid = c.post("/v1/datasets", files={"file": ("src.csv", csv_bytes(*make_texts(48, 3, seed=1)))}).json()["id"]
        source = {"dataset": sid, "name": "killed-src", "train": {"epochs": 1, "max_length": 32, "batch_size": 8}}
        r = c.post("/v1/sources", json=source)
        assert r.status_code == 202, r.text
        job_id = r.json()["job"]
        _wait(lambda: _job(c, job_id)["progress"] > 0.1, 300, "ESM training to start", poll=0.2)
        _kill(proc)
        proc, url = start_server(data, database, ENV)
        c = httpx.Client(base_url=url, timeout=120)
        job = _wait(lambda: (j := _job(c, job_id))["status"] not in ("queued", "running") and j, 60,
                    "the dead training job to be reaped")
        assert job["status"] == "failed"
        src = c.get("/v1/sources/killed-src").json()
        assert src["status"] in ("failed", "ready") and src["status"] != "training"
        if src["status"] == "failed":
            r = c.post("/v1/sources", json=source)  # a failed source is registered again
            assert r.status_code == 202, r.text
            done = _wait(lambda: (j := _job(c, r.json()["job"]))["status"] in ("done", "failed") and j, 400,
                         "the repeated training", poll=0.5)
            assert done["status"] == "done", done
            assert c.get("/v1/sources/killed-src").json()["has_esm"]
        assert not [j for j in c.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]
                    if j["status"] in ("queued", "running")]
        assert c.get(f"/v1/datasets/{kept['id']}").json()["sha256"] == kept["sha256"]
    finally:
        stop_server(proc)
