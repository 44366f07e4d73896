"""REST API: datasets, models/tasks rankings through the score cache, transfer matrix, feedback,
bad input -> 4xx with nothing half-written. Fast encoders (GloVe base, TF-IDF) throughout."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

import estimators
from conftest import csv_bytes, make_texts, npz_bytes, rank, upload, wait_job
from estimators.ranking import DEFAULT_ESTIMATORS


def _state(client):
    ctx = client.app.state.ctx
    from sqlalchemy import func, select

    from app.db.models import Dataset, FeatureSet, Score

    with ctx.Session() as s:
        counts = {m.__tablename__: s.scalar(select(func.count()).select_from(m)) for m in (Dataset, FeatureSet, Score)}
    return counts, sorted(ctx.blobs.keys())


def test_health_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    spec = client.get("/openapi.json").json()
    for path in ("/v1/datasets", "/v1/rankings", "/v1/sources", "/v1/transfer-matrix", "/v1/jobs/{job_id}",
                 "/v1/feedback"):
        assert path in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_upload_formats_and_content_dedupe(client):
    texts, labels = make_texts(40, 4)
    r = upload(client, csv_bytes(texts, labels), "reviews.csv")
    assert r.status_code == 201
    body = r.json()
    assert {k: body[k] for k in ("name", "n_examples", "n_classes", "kind")} == \
        {"name": "reviews", "n_examples": 40, "n_classes": 4, "kind": "text"}
    assert len(body["sha256"]) == 64
    again = upload(client, csv_bytes(texts, labels), "copy.csv")
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    # the same content as JSONL or Parquet is the same dataset (canonical content hash)
    jsonl = pd.DataFrame({"text": texts, "label": labels}).to_json(orient="records", lines=True).encode()
    r = upload(client, jsonl, "x.jsonl")
    assert r.status_code == 200 and r.json()["id"] == body["id"]
    buf = io.BytesIO()
    pd.DataFrame({"text": texts, "label": [f"c{v}" for v in labels], "text_pair": texts[::-1]}).to_parquet(buf)
    r = upload(client, buf.getvalue(), "pairs.parquet", name="with pairs")
    assert r.status_code == 201 and r.json()["name"] == "with pairs" and r.json()["format"] == "parquet"
    X = np.random.default_rng(0).normal(size=(20, 8))
    r = upload(client, npz_bytes(features=X, labels=np.arange(20) % 2), "feats.npz")
    assert r.status_code == 201 and r.json()["kind"] == "features"
    listed = client.get("/v1/datasets").json()["datasets"]
    assert len(listed) == 3
    got = client.get(f"/v1/datasets/{body['id']}").json()
    assert got["sha256"] == body["sha256"]


BAD_UPLOADS = [
    ("empty.csv", b"", 422, "empty"),
    ("cols.csv", b"sentence,y\nhello,1\nworld,2\n", 422, "missing column(s) text, label"),
    ("one.csv", b"text,label\nhello,a\nworld,a\nagain,a\n", 422, "at least 2 classes"),
    ("nulls.csv", b"text,label\nhello,a\n,b\n", 422, "empty value"),
    ("x.xlsx", b"PKnotreally", 422, "unsupported file type"),
    ("broken.parquet", b"PAR1garbage", 422, "could not read"),
    ("nan.npz", npz_bytes(features=np.array([[1.0, np.nan], [0.0, 1.0], [1.0, 1.0]]), labels=np.array([0, 1, 0])),
     422, "NaN"),
    ("nolabels.npz", npz_bytes(features=np.ones((3, 2))), 422, "lacks array(s) labels"),
    ("shape.npz", npz_bytes(features=np.ones((3, 2)), labels=np.array([0, 1])), 422, "rows but labels has"),
]


@pytest.mark.parametrize("filename,content,status,message", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_uploads_are_4xx_and_write_nothing(client, filename, content, status, message):
    before = _state(client)
    r = upload(client, content, filename)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert _state(client) == before


def test_limits(make_client):
    client = make_client(max_upload_bytes=20_000, max_rows=50, max_classes=3)
    texts, labels = make_texts(2000, 3)
    big = csv_bytes(texts, labels)
    assert len(big) * 3 > 10 * 20_000
    r = upload(client, big * 3, "big.csv")  # 10x the limit: refused from Content-Length
    assert r.status_code == 413 and "limit of 20000" in r.json()["detail"]
    r = upload(client, big[:25_000], "slightly.csv")  # just over: refused while streaming the file
    assert r.status_code == 413 and "limit of 20000" in r.json()["detail"]
    r = upload(client, csv_bytes(*make_texts(60, 3)), "rows.csv")
    assert r.status_code == 422 and "60 rows exceed the limit of 50" in r.json()["detail"]
    r = upload(client, csv_bytes(*make_texts(40, 4)), "classes.csv")
    assert r.status_code == 422 and "4 classes exceed the limit of 3" in r.json()["detail"]
    assert _state(client) == ({"datasets": 0, "feature_sets": 0, "scores": 0}, [])


def test_models_ranking_job_then_cache(client):
    did = upload(client, csv_bytes(*make_texts(60, 3)), "t.csv").json()["id"]
    body = {"target": did, "candidates": "models", "estimators": ["logme", "hscore"],
            "sources": ["glove-6b-50d", "tfidf-svd"]}
    r = client.post("/v1/rankings", json=body)
    assert r.status_code == 202 and r.json()["status"] == "queued"
    job = wait_job(client, r.json()["job"])
    assert job["status"] == "done" and job["progress"] == 1.0
    first = client.get(f"/v1/rankings/{r.json()['id']}").json()
    assert first["status"] == "done" and first["computed"] == 4 and first["cached"] == 0
    assert [x["rank"] for x in first["ranking"]] == [1, 2]
    for item in first["ranking"]:
        assert set(item["scores"]) == {"logme", "hscore"}
        d = item["details"]["logme"]
        assert d["encoder"] == item["source"] and d["n"] == 60 and d["version"] and d["cached"] is False
    # the same request again: 200 at once, nothing computed
    r = client.post("/v1/rankings", json=body)
    assert r.status_code == 200
    second = r.json()
    assert second["status"] == "done" and second["computed"] == 0 and second["cached"] == 4
    assert all(item["details"][e]["cached"] for item in second["ranking"] for e in ("logme", "hscore"))
    assert [x["scores"] for x in second["ranking"]] == [x["scores"] for x in first["ranking"]]
    # transfer matrix
    csv = client.get("/v1/transfer-matrix", params={"format": "csv"})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    df = pd.read_csv(io.StringIO(csv.text))
    assert len(df) == 4 and set(df["estimator"]) == {"logme", "hscore"}
    for item in first["ranking"]:
        row = df[(df.source == item["source"]) & (df.estimator == "logme")]
        assert row["value"].iloc[0] == pytest.approx(item["scores"]["logme"])
    js = client.get("/v1/transfer-matrix", params={"estimator": "logme"}).json()
    assert set(js["matrix"]) == {"logme"} and len(js["entries"]) == 2


def test_npz_target_ranks_its_feature_sets_synchronously(client):
    rng = np.random.default_rng(1)
    y = np.arange(80) % 4
    good = np.eye(4)[y] * 3 + rng.normal(scale=0.5, size=(80, 4))
    noise = rng.normal(size=(80, 6))
    probs = np.full((80, 5), 0.05)
    probs[np.arange(80), y] = 0.8
    did = upload(client, npz_bytes(features=noise, labels=y, features_good=good, probs_good=probs),
                 "f.npz").json()["id"]
    out = rank(client, {"target": did, "candidates": "models", "estimators": ["logme"]})
    assert out["ranking"][0]["source"] == "good" and out["computed"] == 2
    out = rank(client, {"target": did, "candidates": "models", "estimators": ["leep"]})
    good_row = next(r for r in out["ranking"] if r["source"] == "good")
    assert good_row["scores"]["leep"] is not None and good_row["rank"] == 1
    skipped = next(r for r in out["ranking"] if r["source"] == "features")
    assert skipped["scores"]["leep"] is None and "probabilities" in skipped["details"]["leep"]["skipped"]


@pytest.mark.parametrize("body,status,message", [
    ({"candidates": "models", "estimators": ["no_such"]}, 422, "unknown estimator"),
    ({"candidates": "models", "estimators": ["mmd"]}, 422, "cannot rank models"),
    ({"candidates": "tasks", "estimators": ["logme"]}, 422, "cannot rank tasks"),
    ({"candidates": "everything"}, 422, "candidates"),
    ({"candidates": "models", "top_k": 0}, 422, "top_k"),
    ({"candidates": "models", "estimators": ["logme"], "params": {"logme": {"bogus": 1}}}, 422, "bogus"),
    ({"candidates": "models", "sources": ["gpt-17"]}, 422, "unknown model candidate"),
])
def test_bad_ranking_requests(client, body, status, message):
    y = np.arange(30) % 3
    did = upload(client, npz_bytes(features=np.random.default_rng(0).normal(size=(30, 5)), labels=y),
                 "f.npz").json()["id"]
    r = client.post("/v1/rankings", json={"target": did, **body})
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_unknown_ids_are_404(client):
    r = client.post("/v1/rankings", json={"target": "nope", "candidates": "models"})
    assert r.status_code == 404 and "no dataset with id 'nope'" in r.json()["detail"]
    for path in ("/v1/datasets/nope", "/v1/jobs/nope", "/v1/rankings/nope", "/v1/sources/nope"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["detail"]
    assert client.delete("/v1/datasets/nope").status_code == 404


def test_estimator_value_error_is_422(client):
    # 3 examples of 3 classes: TMI needs at least 4 examples per class and says so
    did = upload(client, npz_bytes(features=np.eye(3), labels=np.array([0, 1, 2])), "tiny.npz").json()["id"]
    r = client.post("/v1/rankings", json={"target": did, "candidates": "models", "estimators": ["tmi"]})
    assert r.status_code == 422
    assert "no estimator could score" in r.json()["detail"] and "at least 4 examples" in r.json()["detail"]


def _register_npz_source(client, name, X, y):
    did = upload(client, npz_bytes(features=X, labels=y), f"{name}.npz").json()["id"]
    r = client.post("/v1/sources", json={"dataset": did, "name": name, "licence": "CC0-1.0"})
    assert r.status_code == 201, r.text
    return r.json()["source"]


def test_tasks_ranking_with_sources_prefilter_and_feedback_prior(client):
    # sources: a text source embedded by a job, and NPZ sources holding base-encoder features
    # (the tests' base encoder is GloVe 6B, 50 d)
    texts, labels = make_texts(45, 3, seed=5)
    sdid = upload(client, csv_bytes(texts, labels), "movies_src.csv").json()["id"]
    r = client.post("/v1/sources", json={"dataset": sdid, "name": "topics", "train_esm": False})
    assert r.status_code == 202, r.text
    assert wait_job(client, r.json()["job"])["status"] == "done"
    src = client.get("/v1/sources/topics").json()
    assert src["status"] == "ready" and src["has_esm"] is False
    rng = np.random.default_rng(0)
    for i in range(4):
        _register_npz_source(client, f"random{i}", rng.normal(size=(30, 50)), np.arange(30) % 2)
    catalogue = client.get("/v1/sources").json()
    assert {t["name"] for t in catalogue["tasks"]} == {"topics", "random0", "random1", "random2", "random3"}
    assert {"glove-6b-50d", "tfidf-svd", "minilm-l6"} <= {m["name"] for m in catalogue["models"]}

    tdid = upload(client, csv_bytes(*make_texts(36, 3, seed=9)), "target.csv").json()["id"]
    out = rank(client, {"target": tdid, "candidates": "tasks", "estimators": ["semb", "mmd"]})
    assert out["n_candidates"] == 5 and out["computed"] == 10
    assert out["ranking"][0]["source"] == "topics"  # same word distribution as the target
    # prefilter: only the nearest sources in the FAISS index are scored
    pre = rank(client, {"target": tdid, "candidates": "tasks", "estimators": ["semb"], "prefilter_k": 2})
    assert pre["n_candidates"] == 2 and pre["prefilter"]["searched"] == 5
    assert "topics" in {r["source"] for r in pre["ranking"]} and pre["computed"] == 0
    # default estimators: esm_logme skipped (no ESM) + semb, and no feedback yet
    default = rank(client, {"target": tdid, "candidates": "tasks"})
    top = default["ranking"][0]
    assert top["scores"]["esm_logme"] is None and "no ESM" in top["details"]["esm_logme"]["skipped"]
    # observed results: random3 transferred best on this target -> the default ranking uses the prior
    for name, acc in [("random3", 0.95), ("topics", 0.40), ("random0", 0.30)]:
        r = client.post("/v1/feedback", json={"source": name, "target": tdid, "metric": "accuracy", "value": acc})
        assert r.status_code == 201
    with_prior = rank(client, {"target": tdid, "candidates": "tasks"})
    by_name = {r["source"]: r for r in with_prior["ranking"]}
    assert "prior" in by_name["random3"] and by_name["random3"]["observed"] == {"accuracy": 0.95}
    assert by_name["random3"]["rank"] < {r["source"]: r for r in default["ranking"]}["random3"]["rank"]
    assert with_prior["computed"] == 0  # the prior changes the order, not the cached scores
    explicit = rank(client, {"target": tdid, "candidates": "tasks", "estimators": ["semb"]})
    assert all("prior" not in r for r in explicit["ranking"])  # explicit estimators: no prior by default
    matrix = client.get("/v1/transfer-matrix", params={"estimator": "semb"}).json()
    obs = {(o["source"], o["metric"]): o["value"] for o in matrix["observed"]}
    assert obs[("random3", "accuracy")] == 0.95
    row = next(e for e in matrix["entries"] if e["source"] == "random3")
    assert row["observed_value"] == 0.95 and row["value"] is not None
    bad = client.post("/v1/feedback", json={"source": "nobody", "target": tdid, "metric": "accuracy", "value": 1})
    assert bad.status_code == 404


def test_delete_dataset_removes_rows_scores_and_blobs(client):
    did = upload(client, npz_bytes(features=np.random.default_rng(0).normal(size=(30, 4)),
                                   labels=np.arange(30) % 3), "f.npz").json()["id"]
    rank(client, {"target": did, "candidates": "models", "estimators": ["logme"]})
    counts, blobs = _state(client)
    assert counts["scores"] == 2 and blobs  # logme and its cached bootstrap draws
    r = client.delete(f"/v1/datasets/{did}")
    assert r.status_code == 200 and r.json()["scores_removed"] == 2
    assert _state(client) == ({"datasets": 0, "feature_sets": 0, "scores": 0}, [])
    assert client.get(f"/v1/datasets/{did}").status_code == 404


def test_dataset_backing_a_source_cannot_be_deleted_first(client):
    X = np.random.default_rng(0).normal(size=(20, 50))
    src = _register_npz_source(client, "s", X, np.arange(20) % 2)
    r = client.delete(f"/v1/datasets/{src['dataset_id']}")
    assert r.status_code == 409 and "delete the source first" in r.json()["detail"]
    assert client.delete("/v1/sources/s").status_code == 200
    assert client.delete(f"/v1/datasets/{src['dataset_id']}").status_code == 200
    assert client.app.state.ctx.index.describe()["sources"] == 0


def test_full_flow_on_each_database(make_client, db_url, tmp_path):
    """Upload, register sources, rank tasks and models, feedback, matrix, restart: SQLite and PostgreSQL."""
    data = tmp_path / "flow"
    client = make_client(data, database_url=db_url)
    rng = np.random.default_rng(3)
    for i in range(3):
        _register_npz_source(client, f"src{i}", rng.normal(size=(24, 50)) + i, np.arange(24) % 2)
    y = np.arange(40) % 2
    tid = upload(client, npz_bytes(features=rng.normal(size=(40, 50)) + 1, labels=y,
                                   features_alt=np.eye(2)[y] + rng.normal(scale=0.2, size=(40, 2))),
                 "target.npz").json()["id"]
    tasks = rank(client, {"target": tid, "candidates": "tasks", "estimators": ["semb", "frechet"]})
    assert tasks["computed"] == 6 and tasks["ranking"][0]["source"] == "src1"  # same mean shift
    models = rank(client, {"target": tid, "candidates": "models"})
    assert [r["source"] for r in models["ranking"]] == ["alt", "features"]
    assert client.post("/v1/feedback", json={"source": "src2", "target": tid, "metric": "f1",
                                             "value": 0.9}).status_code == 201
    csv = client.get("/v1/transfer-matrix", params={"format": "csv"}).text
    # header, 3 sources x 2 task estimators, 2 models x the 4 default estimators
    assert csv.count("\n") == 1 + 6 + 2 * len(DEFAULT_ESTIMATORS["models"])
    client.__exit__(None, None, None)

    again = make_client(data, database_url=db_url)
    out = rank(again, {"target": tid, "candidates": "tasks", "estimators": ["semb", "frechet"]})
    assert out["computed"] == 0 and out["cached"] == 6
    assert again.app.state.ctx.index.describe()["sources"] == 3
    assert again.get("/v1/feedback", params={"target": tid}).json()["feedback"][0]["value"] == 0.9
    assert again.delete(f"/v1/datasets/{tid}").status_code == 200


def test_source_registration_errors(client):
    X = np.random.default_rng(0).normal(size=(20, 50))
    _register_npz_source(client, "dup", X, np.arange(20) % 2)
    did = upload(client, npz_bytes(features=X + 1, labels=np.arange(20) % 2), "b.npz").json()["id"]
    r = client.post("/v1/sources", json={"dataset": did, "name": "dup"})
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    wrong = upload(client, npz_bytes(features=X[:, :7], labels=np.arange(20) % 2), "w.npz").json()["id"]
    r = client.post("/v1/sources", json={"dataset": wrong, "name": "w"})
    assert r.status_code == 422 and "dim 7" in r.json()["detail"]
    r = client.post("/v1/sources", json={"dataset": did, "train": {"epochs": 0}})
    assert r.status_code == 422 and "epochs" in r.json()["detail"]
    r = client.post("/v1/sources", json={"dataset": did, "train": {"turbo": True}})
    assert r.status_code == 422 and "turbo" in r.json()["detail"]
    r = client.post("/v1/sources", json={"dataset": "missing"})
    assert r.status_code == 404
    assert [t["name"] for t in client.get("/v1/sources").json()["tasks"]] == ["dup"]


def test_concurrent_requests_extract_features_once(settings_factory):
    """Two rankings needing the same features at once share one extraction (and the cache after)."""
    from collections import Counter

    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.workers.local import LocalBackend

    class CountingBackend(LocalBackend):  # the real local backend, counting what it is asked
        calls: Counter = Counter()

        def submit_embed(self, encoder, texts, *, progress=None):
            self.calls[encoder] += 1
            return super().submit_embed(encoder, texts, progress=progress)

    backend = CountingBackend(max_workers=2)
    with TestClient(create_app(settings_factory(), backend=backend)) as client:
        did = upload(client, csv_bytes(*make_texts(40, 2)), "t.csv").json()["id"]
        bodies = [{"target": did, "candidates": "models", "sources": ["glove-6b-50d"], "estimators": [e]}
                  for e in ("logme", "hscore")]
        posted = [client.post("/v1/rankings", json=b) for b in bodies]
        assert [p.status_code for p in posted] == [202, 202]
        for p in posted:
            assert wait_job(client, p.json()["job"])["status"] == "done"
        assert backend.calls["glove-6b-50d"] == 1


def test_npz_default_ranking_is_the_library_default_even_with_probabilities(client):
    """The default is the LOBO-chosen set (estimators.ranking.DEFAULT_ESTIMATORS); LEEP no longer
    joins when every candidate has source probabilities (it is available by name)."""
    rng = np.random.default_rng(2)
    y = np.arange(60) % 3
    arrays = {"features": rng.normal(size=(60, 4)), "labels": y}
    for name, scale in (("a", 3.0), ("b", 0.5)):
        arrays[f"features_{name}"] = np.eye(3)[y] * scale + rng.normal(size=(60, 3))
        logits = np.eye(3)[y] * scale + rng.normal(size=(60, 3))
        arrays[f"probs_{name}"] = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    did = upload(client, npz_bytes(**arrays), "zoo.npz").json()["id"]
    out = rank(client, {"target": did, "candidates": "models", "sources": ["a", "b"]})
    assert out["estimators"] == list(DEFAULT_ESTIMATORS["models"])
    assert [r["source"] for r in out["ranking"]] == ["a", "b"]
    assert all(r["scores"][e] is not None for r in out["ranking"] for e in DEFAULT_ESTIMATORS["models"])
    out = rank(client, {"target": did, "candidates": "models", "sources": ["a", "b"], "estimators": ["logme", "leep"]})
    assert all(r["scores"]["leep"] is not None for r in out["ranking"])


def test_models_ranking_falls_back_for_nleep_and_says_so(client):
    """N-LEEP's 5-components-per-class mixture cannot be fitted on 60 noisy samples in 120 dims:
    the service retries with one component per class (the library's FALLBACK_PARAMS) and notes it."""
    rng = np.random.default_rng(2)
    y = np.arange(60) % 3
    X = rng.normal(size=(60, 120))
    X[:, :3] += np.eye(3)[y]
    X = X.astype(np.float32).astype(np.float64)  # as the service stores features
    with pytest.raises(ValueError, match="could not be fitted"):
        estimators.score("nleep", X, y)
    good = np.eye(3)[y] * 3 + rng.normal(size=(60, 3))
    did = upload(client, npz_bytes(features=X, labels=y, features_good=good), "fb.npz").json()["id"]
    out = rank(client, {"target": did, "candidates": "models", "estimators": ["logme", "nleep"]})
    assert out["estimators"] == ["logme", "nleep"] and out["errors"] == []
    by = {r["source"]: r for r in out["ranking"]}
    assert "n_components" in by["features"]["details"]["nleep"]["fallback"]
    expected = estimators.score("nleep", X, y, n_components=3)
    assert by["features"]["scores"]["nleep"] == pytest.approx(expected, rel=1e-6)
    assert out["ranking"][0]["source"] == "good"
