"""Parallel uploads, rankings and deletes (threads against one service): no 5xx, no orphan
scores, rankings or blobs, and every referenced blob present (SQLite and PostgreSQL)."""
from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np

from conftest import npz_bytes

ALLOWED = {200, 201, 202, 404, 409, 429}


def _payload(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return npz_bytes(features=rng.normal(size=(120, 16)), labels=np.arange(120) % 3,
                     features_m1=rng.normal(size=(120, 16)))


def test_parallel_uploads_rankings_and_deletes(make_client, db_url):
    # about half the rankings become jobs
    client = make_client(database_url=db_url, sync_cost_limit=400_000, max_queued_jobs_per_owner=1000)
    ctx = client.app.state.ctx
    payloads = [_payload(i) for i in range(4)]  # few distinct contents: uploads race on dedupe too
    seen: Counter = Counter()
    bad: list[str] = []
    jobs: list[str] = []
    lock = threading.Lock()

    def record(what: str, r) -> None:
        with lock:
            seen[(what, r.status_code)] += 1
            if r.status_code not in ALLOWED:
                bad.append(f"{what}: {r.status_code} {r.text[:300]}")

    def worker(w: int) -> None:
        for i in range(6):
            r = client.post("/v1/datasets", files={"file": (f"w{w}-{i}.npz", payloads[(w + i) % 4])})
            record("upload", r)
            if r.status_code not in (200, 201):
                continue
            did = r.json()["id"]
            ests = ["logme"] if i % 2 else ["logme", "hscore", "gbc"]
            r = client.post("/v1/rankings", json={"target": did, "candidates": "models", "estimators": ests,
                                                 "bootstrap": 0})
            record("rank", r)
            if r.status_code == 202:
                with lock:
                    jobs.append(r.json()["job"])
            if (w + i) % 3 == 0:
                record("delete", client.delete(f"/v1/datasets/{did}"))
            else:
                record("read", client.get(f"/v1/datasets/{did}"))
            record("matrix", client.get("/v1/transfer-matrix"))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not bad, "\n".join(bad)
    assert seen[("upload", 201)] >= 1 and sum(v for (k, _), v in seen.items() if k == "rank") >= 6

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # every job ends (done, failed or cancelled), none stays running
        states = {j["status"] for j in client.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]}
        if not states & {"queued", "running"}:
            break
        time.sleep(0.1)
    assert not states & {"queued", "running"}

    from sqlalchemy import func, select

    from app.db.models import Dataset, Ranking, Score
    from app.services.datasets import referenced_blobs

    with ctx.Session() as s:
        shas = set(s.scalars(select(Dataset.sha256)))
        scores = list(s.scalars(select(Score.target_sha256)))
        assert all(sha in shas for sha in scores), "orphan scores"
        ids = set(s.scalars(select(Dataset.id)))
        assert all(t in ids for t in s.scalars(select(Ranking.target_id))), "orphan rankings"
        referenced = referenced_blobs(s)
        n_datasets = s.scalar(select(func.count()).select_from(Dataset))
    on_disk = set(ctx.blobs.keys())
    assert referenced <= on_disk, f"missing blobs: {sorted(referenced - on_disk)[:5]}"
    assert not (on_disk - referenced), f"orphan blobs: {sorted(on_disk - referenced)[:5]}"
    matrix = client.get("/v1/transfer-matrix").json()
    assert "null" not in str(matrix.get("targets", "")), matrix
    assert n_datasets <= 4
