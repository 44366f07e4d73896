"""The observed-feedback prior is applied only where it can change the ranking (results for
enough candidates, on this or related targets), is reported with its evidence, and names the
candidates it had no observation for."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import csv_bytes, make_texts, npz_bytes, rank, upload

MODELS = ["glove-6b-50d", "tfidf-svd", "minilm-l6"]


def _npz_target(client, seed=0):
    """An NPZ target whose three feature sets are named after registered models (so feedback on
    them is accepted): tf-idf separates the classes best, GloVe less, MiniLM not at all."""
    rng = np.random.default_rng(seed)
    y = np.arange(90) % 3
    onehot = np.eye(3)[y]
    arrays = {"features": rng.normal(size=(90, 4)), "labels": y,
              "features_tfidf-svd": onehot * 3 + rng.normal(scale=0.5, size=(90, 3)),
              "features_glove-6b-50d": onehot * 1 + rng.normal(scale=0.8, size=(90, 3)),
              "features_minilm-l6": rng.normal(size=(90, 3))}
    r = upload(client, npz_bytes(**arrays), "t.npz")
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _rank(client, target):
    return rank(client, {"target": target, "candidates": "models", "sources": MODELS})


def _feedback(client, source, target, value, metric="accuracy"):
    r = client.post("/v1/feedback", json={"source": source, "target": target, "metric": metric, "value": value})
    assert r.status_code == 201, r.text


def test_one_observation_changes_nothing_and_says_why(client):
    target = _npz_target(client)
    before = _rank(client, target)
    assert before["prior"]["applied"] is False and "no feedback" in before["prior"]["reason"]
    _feedback(client, "minilm-l6", target, 0.91)
    after = _rank(client, target)
    assert after["prior"]["applied"] is False and "at least 2" in after["prior"]["targets"][0]["why"]
    same = [(r["source"], r["score"]) for r in before["ranking"]]
    assert [(r["source"], r["score"]) for r in after["ranking"]] == same
    assert all("prior" not in r for r in after["ranking"])  # no column, no rescaled scores
    assert {r["source"]: r.get("observed") for r in after["ranking"]}["minilm-l6"] == {"accuracy": 0.91}


def test_results_for_two_candidates_move_the_ranking_and_the_third_is_named(client):
    target = _npz_target(client, seed=1)
    before = {r["source"]: r for r in _rank(client, target)["ranking"]}
    assert before["tfidf-svd"]["rank"] == 1
    _feedback(client, "glove-6b-50d", target, 0.92)
    _feedback(client, "tfidf-svd", target, 0.55)
    out = _rank(client, target)
    evidence = out["prior"]
    assert evidence["applied"] is True and evidence["unobserved"] == ["minilm-l6"]
    assert set(evidence["observed"]) == {"glove-6b-50d", "tfidf-svd"}
    assert evidence["observed"]["glove-6b-50d"] > evidence["observed"]["tfidf-svd"]
    used = [t for t in evidence["targets"] if t["used"]]
    assert len(used) == 1 and used[0]["target"] == target and used[0]["similarity"] == 1.0
    after = {r["source"]: r for r in out["ranking"]}
    assert after["minilm-l6"]["prior"] is None and "no observed result" in after["minilm-l6"]["prior_note"]
    assert after["glove-6b-50d"]["prior"] > after["tfidf-svd"]["prior"]
    gap_before = before["tfidf-svd"]["score"] - before["glove-6b-50d"]["score"]
    gap_after = after["tfidf-svd"]["score"] - after["glove-6b-50d"]["score"]
    assert gap_after < gap_before  # the observed results moved glove towards the top
    explicit = rank(client, {"target": target, "candidates": "models", "sources": MODELS, "estimators": ["logme"]})
    assert "prior" not in explicit  # explicit estimators: no prior unless use_feedback


def test_the_prior_is_the_same_when_the_candidates_are_bound_in_batches(client, monkeypatch):
    import app.db.session as db
    from app.db.models import Dataset
    from app.services.prior import feedback_prior

    target = _npz_target(client, seed=2)
    for source, value in (("glove-6b-50d", 0.9), ("tfidf-svd", 0.6), ("glove-6b-50d", 0.8)):
        _feedback(client, source, target, value)
    ctx = client.app.state.ctx
    with ctx.Session() as s:
        ds = s.get(Dataset, target)
    whole = feedback_prior(ctx, ds, MODELS)
    monkeypatch.setattr(db, "IN_BATCH", 1)  # a catalogue past the database's parameter limit
    assert feedback_prior(ctx, ds, MODELS) == whole and whole[0] is not None


def test_results_on_a_related_target_count_unrelated_ones_do_not(client, monkeypatch):
    from app.services import prior as prior_svc

    fast = ["glove-6b-50d", "tfidf-svd"]  # glove is the tests' base encoder: targets get task embeddings
    a = upload(client, csv_bytes(*make_texts(36, 3, seed=41)), "a.csv").json()["id"]
    b = upload(client, csv_bytes(*make_texts(36, 3, seed=42)), "b.csv").json()["id"]
    for t in (a, b):
        rank(client, {"target": t, "candidates": "models", "sources": fast})
    _feedback(client, "glove-6b-50d", b, 0.8)
    _feedback(client, "tfidf-svd", b, 0.4)
    out = rank(client, {"target": a, "candidates": "models", "sources": fast})
    (tb,) = out["prior"]["targets"]
    assert tb["target"] == b and tb["used"] is True and tb["similarity"] >= prior_svc.MIN_SIMILARITY
    assert out["prior"]["applied"] is True and out["prior"]["unobserved"] == []
    assert {r["source"]: r["prior"] for r in out["ranking"]}["glove-6b-50d"] == pytest.approx(1.0)
    monkeypatch.setattr(prior_svc, "MIN_SIMILARITY", 1.01)  # now no other target counts as related
    out = rank(client, {"target": a, "candidates": "models", "sources": fast})
    assert out["prior"]["applied"] is False and "unrelated" in out["prior"]["targets"][0]["why"]
    assert all("prior" not in r for r in out["ranking"])
