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

    settings = settings_factory(tmp_path / "data", database_url=db_url)
    context = Context.open(settings, backend=LocalBackend(max_workers=2))
    yield context
    context.close()


def _catalogue(ctx, tmp_path, S=11, d=12, seed=0):
    rng = np.random.default_rng(seed)
    cands, maps = [], []
    for i in range(S):
        W = rng.normal(size=(d, d)) / math.sqrt(d)
        b = rng.normal(size=d)
        esm = EmbeddingSpaceMap(W, b)
        path = esm.save(tmp_path / f"esm{i}.safetensors", canonical=True)  # as the service stores them
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
                               progress=lambda f, m=None: seen.append(f), chunk_sources=4)
    keys = out.pop("keys")
    assert out == {"computed": 33, "sources": 11, "chunks": 3, "failed": 0} and len(keys) == 33
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


def test_tasks_ranking_through_the_api_uses_the_statistics_path(client, tmp_path):
    """Sources with ESMs: the ranking's esm_* scores equal the one-source estimators, count as
    computed on the first request and come from the cache on the second."""
    from app.services import task_scoring
    from conftest import npz_bytes, rank, upload

    rng = np.random.default_rng(7)
    d = 50  # the test base encoder's dimension
    X = rng.normal(size=(120, d)) + 0.2
    y = rng.integers(0, 3, 120)
    ctx = client.app.state.ctx
    from app.services import datasets as datasets_svc
    from app.services import sources as sources_svc

    maps = {}
    for i in range(3):
        W = np.eye(d) + 0.3 * rng.normal(size=(d, d)) / math.sqrt(d)
        esm = EmbeddingSpaceMap(W, rng.normal(size=d) * 0.1)
        Xs = rng.normal(size=(40, d))
        parsed = datasets_svc.Parsed("features", "npz", rng.integers(0, 2, 40), ["a", "b"], features=Xs)
        ds, _ = datasets_svc.store_parsed(ctx, parsed, f"src{i}")
        sources_svc.add_ready_source(ctx, name=f"src{i}", dataset=ds, base_embeddings=Xs.astype(np.float32),
                                     esm=esm, description="", licence="", origin="user",
                                     encoder=ctx.settings.base_encoder)
        maps[f"src{i}"] = esm
    target = upload(client, npz_bytes(features=X.astype(np.float32), labels=y), "t.npz").json()["id"]
    calls = []
    real = task_scoring.prefill
    try:
        task_scoring.prefill = lambda *a, **k: calls.append(1) or real(*a, **k)
        first = rank(client, {"target": target, "candidates": "tasks",
                              "estimators": ["esm_logme", "esm_etran_lda", "esm_hscore_shrinkage"]})
    finally:
        task_scoring.prefill = real
    assert calls and first["computed"] == 9 and first["cached"] == 0
    for row in first["ranking"]:
        for e in ("esm_logme", "esm_etran_lda", "esm_hscore_shrinkage"):
            assert row["scores"][e] == pytest.approx(estimators.score(e, X, y, esm=maps[row["source"]]), rel=1e-6)
    again = rank(client, {"target": target, "candidates": "tasks", "top_k": 2,
                          "estimators": ["esm_logme", "esm_etran_lda", "esm_hscore_shrinkage"]})
    assert again["computed"] == 0 and again["cached"] == 9


def test_repeated_ranking_is_the_same_ranking_with_an_etag(client):
    from app.db.models import Ranking
    from conftest import npz_bytes, upload

    rng = np.random.default_rng(8)
    X, y = rng.normal(size=(60, 8)).astype(np.float32), rng.integers(0, 2, 60)
    target = upload(client, npz_bytes(features=X, labels=y), "t.npz").json()["id"]
    body = {"target": target, "candidates": "models", "estimators": ["logme"]}
    first = client.post("/v1/rankings", json=body)
    assert first.status_code == 200 and first.headers["ETag"]
    ctx = client.app.state.ctx
    with ctx.Session() as s:
        rows = s.query(Ranking).count()
    second = client.post("/v1/rankings", json=body)
    assert second.status_code == 200 and second.json()["id"] == first.json()["id"]
    assert second.headers["ETag"] == first.headers["ETag"]
    with ctx.Session() as s:
        assert s.query(Ranking).count() == rows  # no new row
    tag = first.headers["ETag"]
    assert client.post("/v1/rankings", json=body, headers={"If-None-Match": tag}).status_code == 304
    got = client.get(f"/v1/rankings/{first.json()['id']}", headers={"If-None-Match": tag})
    assert got.status_code == 304 and got.headers["ETag"] == tag
    assert client.get(f"/v1/rankings/{first.json()['id']}").headers["ETag"] == tag
    other = client.post("/v1/rankings", json={**body, "top_k": 3})  # another request: another ranking
    assert other.status_code == 200 and other.json()["id"] != first.json()["id"]
    more = client.post("/v1/rankings", json={**body, "estimators": ["hscore"]})  # new scores of the target
    assert more.status_code == 200
    after = client.post("/v1/rankings", json=body)  # the cache state changed: a new ranking
    assert after.status_code == 200 and after.json()["id"] != first.json()["id"]


def test_worker_chunks_read_the_canonical_form_and_score_the_same(tmp_path, monkeypatch):
    """A chunk of files saved with their canonical form takes the triangular route; files
    without it (or a chunk mixing both) the general one; the scores agree."""
    import estimators.esm_stats as esm_stats
    from app.workers.scoring import EsmScoreRequest, score_esm_chunk
    from estimators.esm_stats import TargetStats

    rng = np.random.default_rng(5)
    X = rng.normal(size=(200, 12)) + 0.2
    y = rng.integers(0, 3, 200)
    np.savez(tmp_path / "stats.npz", allow_pickle=False, **TargetStats.from_data(X, y).to_arrays())
    plain, canon = [], []
    for i in range(4):
        esm = EmbeddingSpaceMap(rng.normal(size=(12, 12)) / math.sqrt(12), rng.normal(size=12))
        plain.append(str(esm.save(tmp_path / f"p{i}.safetensors", dtype="float32")))
        canon.append(str(esm.save(tmp_path / f"c{i}.safetensors", dtype="float32", canonical=True)))
    calls = []
    real = esm_stats._lower_product
    monkeypatch.setattr(esm_stats, "_lower_product", lambda *a, **k: calls.append(1) or real(*a, **k))
    names = ["esm_logme", "esm_hscore_shrinkage", "esm_etran_lda", "esm_logme_lowrank"]

    def run(paths):
        calls.clear()
        return score_esm_chunk(EsmScoreRequest(str(tmp_path / "stats.npz"), paths, names, device="cpu"))

    want = run(plain)
    assert not calls
    got = run(canon)
    assert len(calls) == 4
    np.testing.assert_allclose(got, want, rtol=1e-9)
    mixed = run(canon[:2] + plain[2:])
    assert not calls
    np.testing.assert_allclose(mixed, want, rtol=1e-12)


def test_rescore_mapped_is_the_resampled_score_of_the_mapped_target(tmp_path):
    from app.workers.scoring import rescore_mapped
    from estimators.uncertainty import rescore

    rng = np.random.default_rng(2)
    X = rng.normal(size=(120, 8))
    y = rng.integers(0, 3, 120)
    esm = EmbeddingSpaceMap(rng.normal(size=(8, 8)), rng.normal(size=8))
    path = str(esm.save(tmp_path / "m.safetensors"))
    idx = rng.integers(0, 120, size=(4, 120))
    np.testing.assert_allclose(rescore_mapped("logme", path, X, y, idx, {}),
                               rescore("logme", esm.transform(X), y, idx, {}), rtol=1e-12)


def test_doctor_gives_old_esm_blobs_their_canonical_form(client, tmp_path):
    """A data dir from before canonical forms: the doctor (CLI check) counts the ESMs without one
    and, with repair, re-stores them with it (same map and metadata, the row repointed, the old
    blob removed); the ranking's scores do not change."""
    from safetensors import safe_open

    from app.db.models import SourceTask
    from app.services import datasets as datasets_svc
    from app.services import doctor
    from app.services import sources as sources_svc
    from conftest import npz_bytes, rank, upload
    from estimators.esm_stats import CANONICAL_LOWER

    rng = np.random.default_rng(11)
    d = 50
    ctx = client.app.state.ctx
    esm = EmbeddingSpaceMap(np.eye(d) + 0.3 * rng.normal(size=(d, d)) / math.sqrt(d), rng.normal(size=d) * 0.1,
                            metadata={"method": "adam", "note": "kept"})
    Xs = rng.normal(size=(40, d))
    ds, _ = datasets_svc.store_parsed(ctx, datasets_svc.Parsed("features", "npz", rng.integers(0, 2, 40), ["a", "b"],
                                                               features=Xs), "old")
    sid = sources_svc.add_ready_source(ctx, name="old", dataset=ds, base_embeddings=Xs.astype(np.float32), esm=esm,
                                       encoder=ctx.settings.base_encoder)
    plain = esm.save(tmp_path / "plain.safetensors", dtype="float32")  # as stored before canonical forms
    old_key = ctx.blobs.put_file(plain, "safetensors")
    with ctx.Session.begin() as s:
        new_key = s.get(SourceTask, sid).esm_blob
        s.get(SourceTask, sid).esm_blob = old_key
    ctx.blobs.delete(new_key)
    target = upload(client, npz_bytes(features=rng.normal(size=(90, d)).astype(np.float32),
                                      labels=rng.integers(0, 3, 90)), "t.npz").json()["id"]
    ests = ["esm_logme", "esm_hscore_shrinkage"]
    before = rank(client, {"target": target, "candidates": "tasks", "estimators": ests})["ranking"][0]["scores"]

    report = doctor.check(ctx, repair=False, esm_forms=True)
    assert report["esms_without_canonical_form"] == 1 and report["esms_given_canonical_form"] == 0
    assert doctor.check(ctx, repair=False)  # the check at start leaves the files alone
    report = doctor.check(ctx, repair=True, esm_forms=True)
    assert report["esms_given_canonical_form"] == 1
    with ctx.Session() as s:
        key = s.get(SourceTask, sid).esm_blob
    assert key != old_key and not ctx.blobs.exists(old_key)
    with safe_open(str(ctx.blobs.path(key)), framework="numpy") as f:
        assert CANONICAL_LOWER in set(f.keys()) and f.metadata()["note"] == "kept"
    stored = EmbeddingSpaceMap.load(ctx.blobs.path(key))
    np.testing.assert_array_equal(stored.weight, EmbeddingSpaceMap.load(plain).weight)
    assert doctor.check(ctx, repair=False, esm_forms=True)["esms_without_canonical_form"] == 0
    X2, y2 = rng.normal(size=(90, d)), rng.integers(0, 3, 90)  # a new target: scored through the new blob
    target2 = upload(client, npz_bytes(features=X2.astype(np.float32), labels=y2), "t2.npz").json()["id"]
    after = rank(client, {"target": target2, "candidates": "tasks", "estimators": ests})["ranking"][0]["scores"]
    for e in ests:
        assert after[e] == pytest.approx(estimators.score(e, X2.astype(np.float32).astype(np.float64), y2,
                                                          esm=stored), rel=1e-6)
    assert before["esm_logme"] is not None
