"""Jobs tell the truth: a running job never says 'queued'; phases and progress within them."""
from __future__ import annotations

import threading

from app.training.esm_job import phase_message


def test_phase_messages_cover_the_esm_job():
    assert phase_message(0.0, 3) == "loading model"
    assert phase_message(0.03, 3) == "fine-tuning epoch 1/3"
    assert phase_message(0.3, 3) == "fine-tuning epoch 2/3"
    assert phase_message(0.7199, 3) == "fine-tuning epoch 3/3"
    assert phase_message(0.75, 3) == "extracting base embeddings"
    assert phase_message(0.9, 3) == "extracting fine-tuned embeddings"
    assert phase_message(1.0, 3) == "fitting the ESM"
    msgs = [phase_message(i / 1000, 2) for i in range(1001)]
    assert msgs.index("fine-tuning epoch 2/2") > msgs.index("fine-tuning epoch 1/2")


def test_running_job_reports_phase_not_queued(client):
    ctx = client.app.state.ctx
    started, release = threading.Event(), threading.Event()
    with ctx.Session.begin() as s:
        job_id = ctx.jobs.create(s, "train_esm", message="queued: ESM training for source x").id
    assert client.get(f"/v1/jobs/{job_id}").json()["message"].startswith("queued")

    def run(progress):
        started.set()
        release.wait(10)
        progress(0.4, "fine-tuning epoch 1/2")
        progress(0.41)  # progress within the phase keeps the phase's message
        started.clear()
        release.clear()
        started.set()
        release.wait(10)
        return {}

    ctx.jobs.submit(job_id, run)
    assert started.wait(10)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "running" and job["message"].startswith("running") and "queued" not in job["message"]
    started.clear()
    release.set()
    assert started.wait(10)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["message"] == "fine-tuning epoch 1/2" and 0.4 <= job["progress"] <= 0.41
    release.set()
    job = ctx.jobs.wait(job_id, timeout=10)
    assert job["status"] == "done" and job["message"] == "done"
