"""Target types end to end: regression (one or several float columns, NPZ) and multi-label
targets rank through the API and the CLI with the estimators that apply; ambiguous labels
(floats, comma lists) without task_type are refused with the reason."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import estimators
from conftest import csv_bytes, make_texts, npz_bytes, rank, upload

FAST = ["glove-6b-50d", "tfidf-svd"]


def _regression_csv(n=60, two=False, seed=0) -> bytes:
    texts, labels = make_texts(n, 3, seed=seed)
    rng = np.random.default_rng(seed)
    y = np.asarray(labels, dtype=float) * 1.3 + rng.normal(0, 0.2, n) + 0.25
    extra = {"label_b": -y + rng.normal(0, 0.3, n)} if two else {}
    return pd.DataFrame({"text": texts, "label": y.round(3), **extra}).to_csv(index=False).encode()


def _multilabel_csv(n=60) -> bytes:
    texts, labels = make_texts(n, 4)
    tags = [",".join(sorted({f"t{c}", "odd" if i % 2 else "even"})) for i, c in enumerate(labels)]
    return pd.DataFrame({"text": texts, "label": tags}).to_csv(index=False).encode()


def test_float_labels_without_task_type_are_refused(client):
    data = pd.DataFrame({"text": ["a film", "a meal", "a goal"], "label": [0.5, 1.7, 2.2]}).to_csv(index=False)
    r = upload(client, data.encode(), "f.csv")
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "real numbers" in detail and "0.5" in detail and "task_type=regression" in detail
    r = upload(client, _multilabel_csv(), "m.csv")
    assert r.status_code == 422 and "task_type=multilabel" in r.json()["detail"]
    # explicit classification keeps each distinct value as a class
    r = client.post("/v1/datasets", files={"file": ("f.csv", data.encode())}, data={"task_type": "classification"})
    assert r.status_code == 201 and r.json()["n_classes"] == 3
    r = client.post("/v1/datasets", files={"file": ("f.csv", data.encode())}, data={"task_type": "bogus"})
    assert r.status_code == 422
    # integer labels are still inferred as classes
    texts, labels = make_texts(20, 2)
    assert upload(client, csv_bytes(texts, labels), "i.csv").json()["task_type"] == "classification"


def test_regression_and_multilabel_rank_through_the_api(client):
    r = client.post("/v1/datasets", files={"file": ("r.csv", _regression_csv())}, data={"task_type": "regression"})
    assert r.status_code == 201, r.text
    reg = r.json()
    assert reg["task_type"] == "regression" and reg["n_classes"] == 0
    out = rank(client, {"target": reg["id"], "candidates": "models", "sources": FAST})
    assert out["estimators"] == ["logme"] and out["target"]["task_type"] == "regression"
    glove = next(x for x in out["ranking"] if x["source"] == "glove-6b-50d")
    # the stored value is LogME's regression evidence on the cached features
    ctx = client.app.state.ctx
    from app.services import datasets as datasets_svc
    from app.services import features as features_svc

    ds = datasets_svc.get(ctx, reg["id"])
    X = features_svc.get_features(ctx, ds, "glove-6b-50d")
    y = datasets_svc.labels(ctx, ds)
    assert glove["scores"]["logme"] == pytest.approx(estimators.score("logme", X, y, regression=True), rel=1e-9)
    # explicitly requested class-label estimators are skipped with the reason
    out = rank(client, {"target": reg["id"], "candidates": "models", "estimators": ["logme", "hscore"],
                        "sources": FAST})
    assert "needs class labels" in out["skipped"]["hscore"]
    assert all(x["scores"]["hscore"] is None for x in out["ranking"])
    r = client.post("/v1/rankings", json={"target": reg["id"], "candidates": "models", "estimators": ["nleep"]})
    assert r.status_code == 422 and "regression" in r.json()["detail"]

    two = client.post("/v1/datasets", files={"file": ("r2.csv", _regression_csv(two=True))},
                      data={"task_type": "regression"}).json()
    assert two["classes"] == ["label", "label_b"]
    out = rank(client, {"target": two["id"], "candidates": "models", "sources": FAST})
    assert all(np.isfinite(x["scores"]["logme"]) for x in out["ranking"])

    r = client.post("/v1/datasets", files={"file": ("m.csv", _multilabel_csv())}, data={"task_type": "multilabel"})
    assert r.status_code == 201, r.text
    ml = r.json()
    assert ml["task_type"] == "multilabel" and ml["classes"] == ["even", "odd", "t0", "t1", "t2", "t3"]
    out = rank(client, {"target": ml["id"], "candidates": "models", "sources": FAST})
    ds = datasets_svc.get(ctx, ml["id"])
    Y = datasets_svc.labels(ctx, ds)
    assert Y.shape == (60, 6) and set(np.unique(Y)) == {0, 1}
    X = features_svc.get_features(ctx, ds, "glove-6b-50d")
    glove = next(x for x in out["ranking"] if x["source"] == "glove-6b-50d")
    assert glove["scores"]["logme"] == pytest.approx(
        estimators.score("logme", X, Y.astype(float), regression=True), rel=1e-9)
    # JSONL with real lists is unambiguous: inferred as multilabel
    texts, labels = make_texts(30, 3)
    jl = "\n".join(json.dumps({"text": t, "label": [f"t{c}"] + (["x"] if i % 3 == 0 else [])})
                   for i, (t, c) in enumerate(zip(texts, labels))).encode()
    assert upload(client, jl, "l.jsonl").json()["task_type"] == "multilabel"


def test_npz_regression_and_multilabel(client):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 8))
    y = X[:, 0] * 2 + rng.normal(0, 0.1, 50)
    r = upload(client, npz_bytes(features=X, labels=y), "r.npz")
    assert r.status_code == 422 and "task_type" in r.json()["detail"] or "class labels" in r.json()["detail"]
    r = client.post("/v1/datasets", files={"file": ("r.npz", npz_bytes(features=X, labels=y))},
                    data={"task_type": "regression"})
    assert r.status_code == 201, r.text
    out = rank(client, {"target": r.json()["id"], "candidates": "models"})
    assert out["ranking"][0]["scores"]["logme"] == pytest.approx(
        estimators.score("logme", X.astype(np.float32), y, regression=True), rel=1e-6)
    Y = (X[:, :3] > 0).astype(np.uint8)
    r = client.post("/v1/datasets", files={"file": ("m.npz", npz_bytes(features=X, labels=Y))},
                    data={"task_type": "multilabel"})
    assert r.status_code == 201 and r.json()["task_type"] == "multilabel", r.text
    bad = client.post("/v1/datasets", files={"file": ("m.npz", npz_bytes(features=X, labels=Y * 3))},
                      data={"task_type": "multilabel"})
    assert bad.status_code == 422 and "0/1" in bad.json()["detail"]


def test_cli_ranks_regression_and_multilabel(tmp_path, capsys):
    from app.cli import main

    reg = tmp_path / "reg.csv"
    reg.write_bytes(_regression_csv())
    ml = tmp_path / "ml.csv"
    ml.write_bytes(_multilabel_csv())
    env_dir = str(tmp_path / "data")
    import os

    os.environ["TRANSFERRANK_BASE_ENCODER"] = "glove-6b-50d"
    os.environ["TRANSFERRANK_SEED_DEMO"] = "0"
    try:
        assert main(["rank", str(reg), "--candidates", "models", "--sources", "glove-6b-50d,tfidf-svd",
                     "--json", "--data-dir", env_dir]) == 2  # ambiguous floats: asks for task_type
        assert "task_type=regression" in capsys.readouterr().err
        for path, t in ((reg, "regression"), (ml, "multilabel")):
            assert main(["rank", str(path), "--candidates", "models", "--task-type", t, "--sources",
                         "glove-6b-50d,tfidf-svd", "--json", "--data-dir", env_dir]) == 0
            out = json.loads(capsys.readouterr().out)
            assert {r["source"] for r in out["ranking"]} == {"glove-6b-50d", "tfidf-svd"}
            assert out["estimators"] == ["logme"]
            assert all(np.isfinite(r["scores"]["logme"]) for r in out["ranking"])
    finally:
        os.environ.pop("TRANSFERRANK_BASE_ENCODER", None)
        os.environ.pop("TRANSFERRANK_SEED_DEMO", None)


def test_many_distinct_floats_say_why(make_client):
    client = make_client(max_classes=5)
    texts, _ = make_texts(12, 3)
    data = pd.DataFrame({"text": texts, "label": np.linspace(0.1, 3.3, 12).round(2)}).to_csv(index=False)
    r = upload(client, data.encode(), "f.csv")
    assert r.status_code == 422 and "real numbers" in r.json()["detail"], r.text


@pytest.mark.parametrize("task_type", ["regression", "multilabel", None])
def test_parquet_bomb_is_refused_for_every_target_type(client, task_type):
    """2,000 rows of one repeated 1 MB text: a few kB dictionary-encoded, 2 GB decoded. The
    regression / multi-label readers count decoded bytes before materialising, like the
    classification reader (issue: bounded input for every reader)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 2000
    table = pa.table({"text": pa.array(["x" * (1 << 20)] * n).dictionary_encode(),
                      "label": pa.array([float(i % 7) / 3 for i in range(n)] if task_type != "multilabel"
                                        else ["a,b"] * n)})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    assert len(buf.getvalue()) < 200_000
    data = {"task_type": task_type} if task_type else {}
    r = client.post("/v1/datasets", files={"file": ("bomb.parquet", buf.getvalue())}, data=data)
    assert r.status_code in (413, 422), r.text
    assert "limit" in r.json()["detail"]
