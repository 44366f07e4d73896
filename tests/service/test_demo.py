"""The committed demo catalogue: loads offline, consistent, embeddings = a fresh MiniLM encode."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from app.demo import DATA_DIR, DemoSource, demo_names, load_demo_catalogue


@pytest.fixture(scope="module")
def catalogue():
    return load_demo_catalogue()


def test_catalogue_loads_and_is_consistent(catalogue):
    assert 5 <= len(catalogue) <= 8
    assert [s.name for s in catalogue] == demo_names()
    assert len({s.name for s in catalogue}) == len(catalogue)
    for src in catalogue:
        assert isinstance(src, DemoSource)
        assert src.encoder == "minilm-l6"
        assert src.licence and src.description and src.provenance
        n = src.n
        assert 100 <= n <= 600
        assert len(src.labels) == n and all(isinstance(t, str) and t for t in src.texts)
        assert len(set(src.texts)) == n  # no duplicates
        assert sorted(set(src.labels)) == sorted(src.classes) and len(src.classes) >= 2
        X = src.base_embeddings
        assert X.dtype == np.float32 and X.shape == (n, 384) and np.isfinite(X).all()
        np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=2e-3)  # float16 storage
        assert src.esm is not None and src.esm.weight.shape == (384, 384) and src.esm.bias.shape == (384,)
        Z = src.esm.transform(X[:20])
        assert Z.shape == (20, 384) and np.isfinite(Z).all()


def test_total_size_is_compact():
    total = sum(p.stat().st_size for p in DATA_DIR.iterdir() if p.is_file())
    assert total < 8e6, f"demo data is {total / 1e6:.1f} MB"
    assert not list(DATA_DIR.glob("*.pkl")) and not list(DATA_DIR.glob("*.pickle"))


def test_embeddings_match_a_fresh_minilm_encode(catalogue, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from app.encoders.registry import get_encoder

    enc = get_encoder("minilm-l6")
    for src in catalogue:
        idx = np.linspace(0, src.n - 1, 3).astype(int)
        fresh = enc.encode([src.texts[i] for i in idx])
        np.testing.assert_allclose(src.base_embeddings[idx], fresh, atol=2e-3)  # float16 rounding


def test_esm_moves_embeddings_towards_the_labels(catalogue):
    """The shipped ESMs are fitted maps, not identities: class structure gets sharper."""
    from estimators import score

    for src in catalogue:
        y = np.unique(np.asarray(src.labels), return_inverse=True)[1]
        X = src.base_embeddings.astype(np.float64)
        assert not np.allclose(src.esm.weight, np.eye(384), atol=1e-2)
        assert score("logme", src.esm.transform(X), y) > score("logme", X, y)


def test_tampered_files_are_rejected(tmp_path):
    shutil.copytree(DATA_DIR, tmp_path / "data")
    entry = json.loads((tmp_path / "data" / "catalogue.json").read_text())["sources"][0]
    arr = tmp_path / "data" / entry["files"]["arrays"]
    arr.write_bytes(arr.read_bytes()[:-10])
    with pytest.raises(ValueError, match="sha256"):
        load_demo_catalogue(tmp_path / "data")
    (tmp_path / "data" / "catalogue.json").unlink()
    with pytest.raises(ValueError, match="build_demo"):
        load_demo_catalogue(tmp_path / "data")
