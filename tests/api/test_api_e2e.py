"""End to end with the real base encoder (all-MiniLM-L6-v2) and the shipped demo catalogue:
register a source through the API, its ESM is trained as a job with progress, and the next
tasks ranking scores it (and the demo sources) by ESM-LogME; a models ranking embeds the target
with MiniLM and GloVe. About a minute on a 2-core CPU."""
from __future__ import annotations

import time

import pytest

from conftest import csv_bytes, make_texts, rank, upload


@pytest.mark.slow
def test_source_esm_training_then_tasks_and_models_rankings(make_client):
    client = make_client(base_encoder="minilm-l6", seed_demo=True)
    from app.demo import demo_names

    demo = set(demo_names())
    catalogue = client.get("/v1/sources").json()["tasks"]
    assert {t["name"] for t in catalogue} == demo and all(t["has_esm"] for t in catalogue)
    texts, labels = make_texts(48, 3, seed=1)
    sid = upload(client, csv_bytes(texts, labels), "topics.csv").json()["id"]
    r = client.post("/v1/sources", json={"dataset": sid, "name": "topics", "licence": "CC0-1.0",
                                         "train": {"epochs": 1, "max_length": 32, "batch_size": 16}})
    assert r.status_code == 202, r.text
    job_id = r.json()["job"]
    seen = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        seen.append(job["progress"])
        if job["status"] in ("done", "failed"):
            break
        time.sleep(0.2)
    assert job["status"] == "done", job
    assert seen == sorted(seen) and seen[-1] == 1.0  # progress only moves forward
    src = client.get("/v1/sources/topics").json()
    assert src["status"] == "ready" and src["has_esm"] and src["esm"]["bytes"] < 1_200_000

    other_texts, other_labels = make_texts(30, 2, seed=2, vocab_shift=2)
    oid = upload(client, csv_bytes(other_texts, other_labels), "other.csv").json()["id"]
    r = client.post("/v1/sources", json={"dataset": oid, "name": "no-esm", "train_esm": False})
    assert r.status_code == 202

    tid = upload(client, csv_bytes(*make_texts(36, 3, seed=3)), "target.csv").json()["id"]
    deadline = time.monotonic() + 120
    while client.get("/v1/sources/no-esm").json()["status"] != "ready" and time.monotonic() < deadline:
        time.sleep(0.2)
    out = rank(client, {"target": tid, "candidates": "tasks"})
    by = {r["source"]: r for r in out["ranking"]}
    assert set(by) == {"topics", "no-esm"} | demo
    assert by["topics"]["scores"]["esm_logme"] is not None and by["topics"]["has_esm"]
    assert all(by[name]["scores"]["esm_logme"] is not None for name in demo)
    assert by["no-esm"]["scores"]["esm_logme"] is None and by["no-esm"]["scores"]["semb"] is not None
    # the library's tasks default: the ESM trio weighs 1; semb weighs 0 and only orders the source
    # without an ESM, which comes last, unscored, with a note saying why
    assert out["estimators"] == ["esm_logme", "esm_etran_lda", "esm_hscore_shrinkage", "semb"]
    assert out["combine"]["weights"]["semb"] == 0.0 and out["combine"]["weights"]["esm_etran_lda"] == 1.0
    assert all(by[name]["scores"]["esm_hscore_shrinkage"] is not None for name in demo | {"topics"})
    assert out["ranking"][-1]["source"] == "no-esm" and by["no-esm"]["score"] is None
    assert "semb" in by["no-esm"]["note"]
    assert out["ranking"][0]["source"] == "topics"  # same topics as the target
    assert rank(client, {"target": tid, "candidates": "tasks"})["computed"] == 0

    models = rank(client, {"target": tid, "candidates": "models", "sources": ["minilm-l6", "glove-6b-50d"]})
    assert {r["source"] for r in models["ranking"]} == {"minilm-l6", "glove-6b-50d"}
    defaults = ("logme", "gbc", "hscore_shrinkage", "tmi")  # estimators.ranking.DEFAULT_ESTIMATORS["models"]
    assert models["estimators"] == list(defaults)
    assert all(r["scores"][e] is not None for r in models["ranking"] for e in defaults)
    assert models["computed"] == 2 * len(defaults)  # every default estimator per model
