"""Demo catalogue seeding: sources, base embeddings and ESMs land in SQL / blobs / FAISS once
(idempotent across restarts) and a tasks ranking scores them with ESM-LogME."""
from __future__ import annotations

import types
from dataclasses import dataclass

import numpy as np
import pytest

from conftest import FAST_BASE, csv_bytes, make_texts, rank, upload


@dataclass
class _Source:  # the fields of app.demo.DemoSource that seeding reads
    name: str
    description: str
    licence: str
    texts: list
    labels: list
    base_embeddings: np.ndarray
    esm: object
    encoder: str


def _catalogue():
    """Two small sources embedded with the tests' base encoder (GloVe), one with a fitted ESM."""
    from app.encoders.registry import get_encoder
    from estimators.esm import EmbeddingSpaceMap

    enc = get_encoder(FAST_BASE)
    out = []
    for i, (shift, with_esm) in enumerate([(0, True), (2, False)]):
        texts, labels = make_texts(30, 2, seed=10 + i, vocab_shift=shift)
        X = enc.encode(texts)
        esm = None
        if with_esm:
            rng = np.random.default_rng(i)
            target_space = X @ rng.normal(size=(X.shape[1], X.shape[1])) * 0.1 + X
            esm = EmbeddingSpaceMap().fit(X, target_space, method="lstsq")
        out.append(_Source(f"demo-{i}", f"demo source {i}", "CC0-1.0", texts, [f"c{v}" for v in labels], X, esm,
                           FAST_BASE))
    return out


@pytest.fixture
def demo_module(monkeypatch):
    catalogue = _catalogue()
    module = types.ModuleType("app.demo")
    module.load_demo_catalogue = lambda: catalogue
    monkeypatch.setitem(__import__("sys").modules, "app.demo", module)
    return catalogue


def test_demo_seeding_is_idempotent_and_ranked_by_esm_logme(make_client, demo_module, tmp_path):
    data = tmp_path / "demo-data"
    c1 = make_client(data, seed_demo=True)
    tasks = {t["name"]: t for t in c1.get("/v1/sources").json()["tasks"]}
    assert set(tasks) == {"demo-0", "demo-1"}
    assert tasks["demo-0"]["has_esm"] and not tasks["demo-1"]["has_esm"]
    assert tasks["demo-0"]["origin"] == "demo" and tasks["demo-0"]["licence"] == "CC0-1.0"
    assert c1.app.state.ctx.index.describe()["sources"] == 2
    tid = upload(c1, csv_bytes(*make_texts(24, 2, seed=99)), "t.csv").json()["id"]
    out = rank(c1, {"target": tid, "candidates": "tasks"})
    by = {r["source"]: r for r in out["ranking"]}
    assert by["demo-0"]["scores"]["esm_logme"] is not None
    assert by["demo-1"]["scores"]["esm_logme"] is None and by["demo-1"]["scores"]["semb"] is not None
    assert out["ranking"][0]["source"] == "demo-0"  # same vocabulary as the target
    n_blobs = len(list(c1.app.state.ctx.blobs.keys()))
    c1.__exit__(None, None, None)

    c2 = make_client(data, seed_demo=True)  # restart: nothing is added twice
    assert len(c2.get("/v1/sources").json()["tasks"]) == 2
    assert len(c2.get("/v1/datasets").json()["datasets"]) == 1  # the caller's own; the demo ones are public
    assert len(list(c2.app.state.ctx.blobs.keys())) == n_blobs
    assert rank(c2, {"target": tid, "candidates": "tasks"})["computed"] == 0
