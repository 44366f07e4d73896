"""Two-stage tasks rankings for big catalogues (app.services.two_stage) through the REST API: a
40-source imported catalogue with the threshold at 10."""
from __future__ import annotations

import time

import numpy as np
import pytest
from test_byo_catalogue import write_hfselect_esm, zip_dir

from conftest import csv_bytes, make_texts, rank, upload, wait_job

S = 40


def _service(make_client, tmp_path, data_dir: str, **settings):
    """A service with the 40-source catalogue imported and the target uploaded."""
    client = make_client(tmp_path / data_dir, **settings)
    root = tmp_path / "catalogue"
    if not root.exists():
        for i in range(S):
            write_hfselect_esm(root / f"s{i:02d}", 50, "glove-6b-50d", i)
    r = client.post("/v1/sources/import", files={"file": ("esms.zip", zip_dir(root))})
    assert r.status_code in (201, 202), r.text
    if r.status_code == 202:
        assert wait_job(client, r.json()["job"])["status"] == "done"
    texts, labels = make_texts(90, n_classes=3, seed=4)
    target = upload(client, csv_bytes(texts, labels), name="target").json()["id"]
    return client, target


@pytest.fixture
def catalogue(make_client, tmp_path):
    return _service(make_client, tmp_path, "data", two_stage_above=10, two_stage_shortlist=8,
                    two_stage_calibration=6, two_stage_rank=8)


def test_two_stage_ranking_through_the_api(catalogue, make_client, tmp_path):
    client, target = catalogue
    body = {"target": target, "candidates": "tasks", "top_k": 20, "bootstrap": 20}
    r = client.post("/v1/rankings", json=body)
    assert r.status_code == 202, r.text  # a big catalogue: always a job
    job = wait_job(client, r.json()["job"])
    assert job["status"] == "done", job
    two = client.get(f"/v1/rankings/{r.json()['id']}").json()
    block = two["two_stage"]
    assert block["applied"] and block["candidates"] == S and two["n_candidates"] == S
    assert block["shortlist"] == 8 and block["calibration"] == 6 and block["exact"] == 14 == two["n_exact"]
    assert block["first_stage"]["sources"] == S and block["first_stage"]["computed"] == 2 * S
    assert block["first_stage_only"] == S - 14 and len(block["exact_sources"]) == 14
    items = two["ranking"]
    assert len(items) == 20 and [it["rank"] for it in items] == list(range(1, 21))
    exact = [it for it in items if it["stage"] == "exact"]
    first = [it for it in items if it["stage"] == "first"]
    assert [it["stage"] for it in items] == ["exact"] * 14 + ["first"] * 6  # exact ones first
    assert {it["source"] for it in exact} == set(block["exact_sources"])
    for it in exact:
        assert it["score"] is not None and all(it["scores"][e] is not None for e in
                                               ("esm_logme", "esm_etran_lda", "esm_hscore_shrinkage"))
        assert it["first_stage"]["score"] is not None
    for it in first:  # only the first stage: ETran-LDA (exact) and the first-stage score, no combined score
        assert it["score"] is None and it["scores"]["esm_logme"] is None and it["scores"]["esm_etran_lda"] is not None
        assert it["first_stage"]["esm_logme_lowrank"] is not None
    fs = [it["first_stage"]["score"] for it in first]
    assert fs == sorted(fs, reverse=True)
    shortlisted_fs = sorted((it["first_stage"]["score"] for it in exact), reverse=True)[:8]
    assert min(shortlisted_fs) >= max(fs)  # the shortlist is the best of the first stage
    assert two["uncertainty"]["B"] == 20 and any("two-stage" in w for w in two["uncertainty"]["warnings"])

    # the cached repeat: answered from memory (same ranking id, no job), with an ETag; If-None-Match -> 304
    t0 = time.perf_counter()
    again = client.post("/v1/rankings", json=body)
    assert again.status_code == 200 and time.perf_counter() - t0 < 1.0
    assert again.json()["id"] == two["id"] and again.json()["ranking"] == two["ranking"]
    tag = again.headers["ETag"]
    assert client.post("/v1/rankings", json=body, headers={"If-None-Match": tag}).status_code == 304


    # the exhaustive path on another service (nothing cached, threshold off): every source exact; the
    # exactly scored sources' values are the same numbers (up to the batched arithmetic's rounding)
    other, other_target = _service(make_client, tmp_path, "exhaustive", two_stage_above=0)
    full = rank(other, dict(body, target=other_target, top_k=S))
    assert "two_stage" not in full and full["n_candidates"] == S and full["computed"] >= 3 * S
    by_name = {it["source"]: it for it in full["ranking"]}
    for it in exact:
        for e in ("esm_logme", "esm_etran_lda", "esm_hscore_shrinkage"):
            assert it["scores"][e] == pytest.approx(by_name[it["source"]]["scores"][e], rel=1e-9)
    for it in first:
        assert it["scores"]["esm_etran_lda"] == pytest.approx(by_name[it["source"]]["scores"]["esm_etran_lda"],
                                                              rel=1e-9)
    # two_stage: false on the same service: the exhaustive ranking
    assert "two_stage" not in rank(client, dict(body, two_stage=False, top_k=S))
    # the exact sources' combined scores (catalogue-wide normalisation estimated from the calibration
    # sample) order them as the exhaustive ranking does (Kendall's tau over the pairs)
    ex = [by_name[it["source"]]["score"] for it in exact]
    pairs = [(i, j) for i in range(len(ex)) for j in range(i + 1, len(ex))]
    tau = sum(1 if ex[i] > ex[j] else -1 for i, j in pairs) / len(pairs)
    assert tau >= 0.8, tau
    # scores of the exhaustive combination and of the estimated one are close (same scale)
    np.testing.assert_allclose([it["score"] for it in exact], ex, atol=0.35)

    # the first stage's low-rank LogME is cached under its own name, never as esm_logme
    from app.db.models import Score

    ctx = client.app.state.ctx
    with ctx.Session() as s:
        names = {e for (e,) in s.query(Score.estimator).distinct()}
    assert "stage1:esm_logme_lowrank" in names and "esm_logme_lowrank" not in names


def test_two_stage_with_everything_exact_is_the_exhaustive_order(make_client, tmp_path):
    """A shortlist as large as the catalogue: the two-stage answer is the exhaustive one."""
    client = make_client(two_stage_above=5, two_stage_shortlist=50, two_stage_calibration=0)
    root = tmp_path / "catalogue"
    for i in range(12):
        write_hfselect_esm(root / f"s{i:02d}", 50, "glove-6b-50d", 100 + i)
    assert client.post("/v1/sources/import", files={"file": ("esms.zip", zip_dir(root))}).status_code == 201
    texts, labels = make_texts(60, n_classes=3, seed=5)
    target = upload(client, csv_bytes(texts, labels), name="t").json()["id"]
    body = {"target": target, "candidates": "tasks", "top_k": 12, "bootstrap": 0}
    two = rank(client, body)
    full = rank(client, dict(body, two_stage=False))
    assert two["two_stage"]["exact"] == 12
    assert [it["source"] for it in two["ranking"]] == [it["source"] for it in full["ranking"]]
    np.testing.assert_allclose([it["score"] for it in two["ranking"]], [it["score"] for it in full["ranking"]],
                               rtol=1e-9, atol=1e-12)


def test_two_stage_request_checks(catalogue):
    client, target = catalogue
    for bad in ({"candidates": "models", "two_stage": True},
                {"candidates": "tasks", "two_stage": True, "estimators": ["esm_logme"]},
                {"candidates": "tasks", "two_stage": True, "prefilter_k": 5}):
        r = client.post("/v1/rankings", json={"target": target, **bad})
        assert r.status_code == 422 and "two_stage" in r.json()["detail"]
    # prefilter_k stays the explicit FAISS option: no two-stage block
    out = rank(client, {"target": target, "candidates": "tasks", "prefilter_k": 5, "bootstrap": 0})
    assert "two_stage" not in out and out["prefilter"]["k"] == 5
