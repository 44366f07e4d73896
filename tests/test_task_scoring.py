"""Tasks rankings' ESM scores from the target statistics, in chunks on the worker backend."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

import estimators
from estimators.esm import EmbeddingSpaceMap


@dataclass
class _Cand:
    source: str
    esm_key: str | None
    source_sha256: str
    kind: str = "task"
    encoder: str = "glove-6b-50d"
    meta: dict = field(default_factory=dict)


def _params_of(est, c):
    return {"source_sha256": c.source_sha256, "esm": c.esm_key}


@pytest.fixture
def ctx(settings_factory, db_url, tmp_path):
    from app.services.context import Context
    from app.workers.local import LocalBackend

    context = Context.open(settings_factory(tmp_path / "data", database_url=db_url),
                           backend=LocalBackend(max_workers=2))
    yield context
    context.close()


def _catalogue(ctx, tmp_path, S=11, d=12, seed=0):
    rng = np.random.default_rng(seed)
    cands, maps = [], []
    for i in range(S):
        W = rng.normal(size=(d, d)) / math.sqrt(d)
        b = rng.normal(size=d)
        esm = EmbeddingSpaceMap(W, b)
        path = esm.save(tmp_path / f"esm{i}.safetensors")
        cands.append(_Cand(f"src{i:02d}", ctx.blobs.put_file(path, "safetensors"), f"{i:064x}"))
        maps.append(EmbeddingSpaceMap.load(path))
    cands.append(_Cand("no-esm", None, "f" * 64))
    return cands, maps


def test_prefill_scores_every_source_in_chunks_then_reads_the_cache(ctx, tmp_path):
    from app.services import scores as scores_svc
    from app.services import task_scoring

    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 12)) + 0.3
    y = rng.integers(0, 3, 150)
    cands, maps = _catalogue(ctx, tmp_path)
    names = ["esm_logme", "esm_etran_lda", "esm_hscore_shrinkage", "semb"]
    seen = []
    out = task_scoring.prefill(ctx, "a" * 64, 150, "glove-6b-50d", X, y, cands, names, _params_of,
                               progress=seen.append, chunk_sources=4)
    assert out == {"computed": 33, "sources": 11, "chunks": 3, "failed": 0}
    assert seen == sorted(seen) and seen[-1] == 1.0
    ver = scores_svc.version()
    with ctx.Session() as s:
        cache = scores_svc.lookup_target(s, "a" * 64, names, ver)
    assert len(cache) == 33
    for c, m in zip(cands, maps):
        for e in names[:3]:
            ph = scores_svc.params_hash(_params_of(e, c))
            row = cache[scores_svc.key(c.source, "a" * 64, c.encoder, e, ph, ver)]
            assert row.value == pytest.approx(estimators.score(e, X, y, esm=m), rel=1e-6)
    again = task_scoring.prefill(ctx, "a" * 64, 150, "glove-6b-50d", X, y, cands, names, _params_of)
    assert again["computed"] == 0 and again["sources"] == 0


def test_user_parameters_and_failed_chunks_are_left_to_the_one_source_path(ctx, tmp_path):
    from app.services import task_scoring

    rng = np.random.default_rng(2)
    X = rng.normal(size=(80, 12))
    y = rng.integers(0, 2, 80)
    cands, _ = _catalogue(ctx, tmp_path, S=3)
    custom = lambda est, c: {**_params_of(est, c), "regression": False}  # noqa: E731
    out = task_scoring.prefill(ctx, "b" * 64, 80, "glove-6b-50d", X, y, cands, ["esm_logme"], custom)
    assert out["computed"] == 0
    cands[1].esm_key = "0" * 64 + ".safetensors"  # a missing blob: that chunk fails, nothing stored
    out = task_scoring.prefill(ctx, "c" * 64, 80, "glove-6b-50d", X, y, cands, ["esm_logme"], _params_of,
                               chunk_sources=1)
    assert out["computed"] == 2 and out["failed"] == 1


def test_target_statistics_are_kept_as_a_blob(ctx):
    from app.services import task_scoring
    from app.workers.scoring import load_target_stats

    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(40, 5)), rng.integers(0, 2, 40)
    key = task_scoring.target_stats_blob(ctx, "d" * 64, "enc", X, y)
    assert key.endswith(".npz") and ctx.blobs.exists(key)
    assert task_scoring.target_stats_blob(ctx, "d" * 64, "enc", X, y) == key
    st = load_target_stats(str(ctx.blobs.path(key)))
    assert st.n == 40 and st.d == 5 and st.n_classes == 2
