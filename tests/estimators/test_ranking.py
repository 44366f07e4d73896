"""estimators.ranking: the default ranker's contract, determinism, failure handling, priors, validation."""
from __future__ import annotations

import math

import numpy as np
import pytest

import estimators
from estimators import ranking as ranking_mod
from estimators.ranking import (
    DEFAULT_ESTIMATORS,
    DEFAULT_WEIGHTS,
    observed_prior,
    profile_similarity,
    rank_candidates,
    static_score,
)

N, C = 90, 3


def _data(seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(C), N // C)
    means = rng.normal(size=(C, 8))

    def feats(sep):  # class-separated features, separation `sep`
        return sep * means[y] + rng.normal(size=(N, 8))

    def probs(sharp):  # source probabilities whose argmax tracks the class with prob. `sharp`
        Z = 5
        logits = rng.normal(size=(N, Z))
        logits[np.arange(N), y] += sharp
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    cands = {
        "good": {"features": feats(3.0), "probs": probs(4.0), "meta": {"params": 10_000, "source_size": 5000}},
        "mid": {"features": feats(1.0), "probs": probs(1.0), "meta": {"params": 10_000, "source_size": 5000}},
        "noise": {"features": feats(0.0), "probs": probs(0.0), "meta": {"params": 10_000, "source_size": 5000}},
    }
    return cands, y


def test_contract_and_order():
    cands, y = _data()
    out = rank_candidates(cands, y)
    assert [r["name"] for r in out] == ["good", "mid", "noise"]
    scores = [r["score"] for r in out]
    assert scores == sorted(scores, reverse=True)
    for r in out:
        assert set(r) >= {"name", "score", "scores"} and isinstance(r["score"], float)
        # the default (chosen by leave-one-benchmark-out) uses logme, gbc, hscore_shrinkage and tmi
        # -- no LEEP even when every candidate has probs -- and reports the static prior
        assert set(r["scores"]) == {"logme", "gbc", "hscore_shrinkage", "tmi", "static"}
        assert r["scores"]["logme"] == pytest.approx(estimators.score("logme", cands[r["name"]]["features"], y))
        assert r["scores"]["static"] == pytest.approx(math.log10(10_000) + math.log10(5001))
    assert out[0]["skipped"] == {}


def test_default_estimators_follow_the_inputs():
    cands, y = _data()
    feats_only = {k: {"features": v["features"]} for k, v in cands.items()}
    out = rank_candidates(feats_only, y)
    assert set(out[0]["scores"]) == {"logme", "gbc", "hscore_shrinkage", "tmi"}
    assert [r["name"] for r in out][0] == "good"


def test_models_default_is_the_committed_lobo_choice():
    """DEFAULT_ESTIMATORS is what bench.lobo's committed study recommends (rule chosen by issue 13's
    acceptance), for both kinds; every default member scores features and has a default weight."""
    import json
    from pathlib import Path

    rec = json.loads((Path(__file__).resolve().parents[2] / "bench/results/lobo.json").read_text())["recommendation"]
    assert tuple(DEFAULT_ESTIMATORS["models"]) == tuple(rec["models"]["estimators"])
    assert tuple(DEFAULT_ESTIMATORS["tasks"]) == tuple(rec["tasks"]["estimators"])
    assert rec["acceptance"][rec["rule"]]["passes"]
    for kind in ("models", "tasks"):
        for e in DEFAULT_ESTIMATORS[kind]:
            assert estimators.info(e).needs == "features" and DEFAULT_WEIGHTS[e] == 1.0


def test_tasks_kind_uses_the_esm_default_set():
    """kind="tasks" (ESM-mapped features): LogME, ETran-LDA and the shrinkage H-score, never N-LEEP
    nor LEEP; an unknown kind is a ValueError."""
    cands, y = _data()
    out = rank_candidates(cands, y, kind="tasks")
    assert set(out[0]["scores"]) == {"logme", "etran_lda", "hscore_shrinkage", "static"}
    assert set(DEFAULT_ESTIMATORS["tasks"]) == {"logme", "etran_lda", "hscore_shrinkage"}
    assert [r["name"] for r in out] == ["good", "mid", "noise"]
    for r in out:
        assert r["scores"]["etran_lda"] == pytest.approx(estimators.score("etran_lda", cands[r["name"]]["features"], y))
    with pytest.raises(ValueError, match="kind must be one of models, tasks"):
        rank_candidates(cands, y, kind="datasets")


def test_deterministic_and_independent_of_input_order():
    cands, y = _data()
    a = rank_candidates(cands, y)
    b = rank_candidates(dict(reversed(list(cands.items()))), y)
    assert a == b == rank_candidates(cands, y)


def test_ties_are_broken_by_name():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20, 4))
    y = np.arange(20) % 2
    out = rank_candidates({"b": {"features": X}, "a": {"features": X}, "c": {"features": X}}, y)
    assert [r["name"] for r in out] == ["a", "b", "c"]
    assert all(r["score"] == 0.0 for r in out)


def test_candidate_without_an_input_is_unscored_and_last():
    """combine's policy: a candidate lacking the input of a requested estimator (no probs) is not
    scored and comes last with the reason; the others are ranked by every requested estimator."""
    cands, y = _data()
    del cands["mid"]["probs"]
    out = rank_candidates(cands, y, estimators=["logme", "leep"])
    assert [r["name"] for r in out] == ["good", "noise", "mid"]
    assert out[-1]["score"] is None and "probs" in out[-1]["unscored"]
    assert out[0]["skipped"] == {} and set(out[0]["scores"]) == {"logme", "leep"}
    assert set(out[-1]["scores"]) == {"logme"}
    # nobody has probs: the column is dropped for all, with the reason
    for c in cands.values():
        c.pop("probs", None)
    out = rank_candidates(cands, y, estimators=["logme", "leep"])
    assert "leep" in out[0]["skipped"] and "probs" in out[0]["skipped"]["leep"]
    assert all(set(r["scores"]) == {"logme"} and r["score"] is not None for r in out)


def test_estimator_failing_on_one_candidate_is_skipped_for_all(monkeypatch):
    cands, y = _data()
    from estimators import ranking

    real = ranking._score

    def fails_on_mid(name, X, y, **kw):
        if name == "logme" and X is cands["mid"]["features"]:
            raise ValueError("singular")
        return real(name, X, y, **kw)

    monkeypatch.setattr(ranking, "_score", fails_on_mid)
    out = rank_candidates(cands, y, estimators=["logme", "leep"])
    assert out[0]["skipped"] == {"logme": "ValueError: singular"}
    assert all(set(r["scores"]) == {"leep"} and r["score"] is not None for r in out)


def test_noise_level_spread_contributes_nothing():
    """H-score values that differ only by rounding (std ~1e-12) give z = 0 for every candidate."""
    vals = np.array([1.0000000000000007, 0.99999999999749, 1.0000000000000002, 0.9999999999999998])
    assert np.all(ranking_mod.zscores(vals) == 0.0)
    assert np.all(ranking_mod.zscores(np.zeros(3)) == 0.0)
    assert np.all(ranking_mod.zscores(np.array([1e-100, 2e-100, 4e-100])) != 0.0)  # relative, not absolute
    table = ranking_mod.ScoreTable(["a", "b", "c", "d"])
    table.add_column("hscore")
    table.add_column("logme")
    for cand, h, lg in zip("abcd", vals, [0.3, 0.1, 0.2, 0.0]):
        table.set("hscore", cand, h)
        table.set("logme", cand, lg)
    res = ranking_mod.combine(table)
    assert [n for n, _, _ in res.order] == ["a", "c", "b", "d"]
    assert all(z["hscore"] == 0.0 for _, _, z in res.order)


def test_combine_reports_a_failed_ranking_with_its_reason():
    table = ranking_mod.ScoreTable(["a", "b"])
    table.add_column("leep")
    table.mark_unavailable("leep", "a", "a has no probs")
    table.mark_unavailable("leep", "b", "b has no probs")
    with pytest.raises(ranking_mod.RankingFailed, match="leep: no candidate has a value.*has no probs"):
        ranking_mod.combine(table)
    assert issubclass(ranking_mod.RankingFailed, ValueError)


def test_zero_weight_columns_rank_when_nothing_else_remains():
    table = ranking_mod.ScoreTable(["a", "b", "c"])
    table.add_column("esm_logme")
    table.add_column("semb")
    for cand, v in zip("abc", [0.1, 0.3, 0.2]):
        table.set("semb", cand, v)
        table.mark_unavailable("esm_logme", cand, f"source {cand} has no ESM")
    res = ranking_mod.combine(table, {"semb": 0.0})
    assert [n for n, _, _ in res.order] == ["b", "c", "a"] and "combine" in res.notes
    assert "no ESM" in res.skipped["esm_logme"]
    # one source with an ESM: it is scored, the others come after, ordered by semb
    table = ranking_mod.ScoreTable(["a", "b", "c"])
    table.add_column("esm_logme")
    table.add_column("semb")
    table.set("esm_logme", "a", -1.0)
    for cand, v in zip("abc", [0.1, 0.3, 0.2]):
        table.set("semb", cand, v)
    for cand in "bc":
        table.mark_unavailable("esm_logme", cand, f"source {cand} has no ESM")
    res = ranking_mod.combine(table, {"semb": 0.0})
    assert [(n, s) for n, s, _ in res.order] == [("a", 0.0), ("b", None), ("c", None)]
    assert "no ESM" in res.unscored["b"]


def test_unexpected_exception_is_skipped_too(monkeypatch):
    cands, y = _data()
    from estimators import ranking

    real = ranking._score

    def flaky(name, X, y, **kw):
        if name == "tmi":
            raise RuntimeError("k-d tree failed")
        return real(name, X, y, **kw)

    monkeypatch.setattr(ranking, "_score", flaky)
    out = rank_candidates(cands, y)
    assert out[0]["skipped"]["tmi"].startswith("RuntimeError: k-d tree failed")
    assert set(out[0]["scores"]) == {"logme", "gbc", "hscore_shrinkage", "static"} and out[0]["name"] == "good"


def test_nleep_falls_back_to_one_component_per_class(monkeypatch):
    cands, y = _data()
    from estimators import ranking

    real = ranking._score
    calls = []

    def picky(name, X, y, **kw):
        if name == "nleep":
            calls.append(kw)
            if kw.get("n_components") != C:
                raise ValueError("mixture could not be fitted")
        return real(name, X, y, **kw)

    monkeypatch.setattr(ranking, "_score", picky)
    out = rank_candidates(cands, y, estimators=["logme", "nleep"])
    assert "nleep" in out[0]["scores"] and "nleep" not in out[0]["skipped"]
    assert "n_components" in out[0]["notes"]["nleep"]
    assert calls[-1] == {"n_components": C} and len(calls) == 1 + len(cands)  # every candidate re-scored
    # explicit parameters are respected: no silent fallback
    out = rank_candidates(cands, y, estimators=["logme", "nleep"], nleep={"n_components": 2 * C})
    assert "nleep" in out[0]["skipped"] and "notes" not in out[0]


def test_nleep_falls_back_to_diagonal_covariances_on_few_shot_many_class_targets():
    """10 examples per class, 40 classes, 200-dim features: neither 5 C nor C full-covariance
    components can be fitted; the diagonal fallback keeps N-LEEP in a ranking that asks for it."""
    rng = np.random.default_rng(5)
    n_cls = 40
    y = np.repeat(np.arange(n_cls), 10)
    means = rng.normal(size=(n_cls, 16))
    cands = {f"m{i}": {"features": (sep * means[y] + rng.normal(size=(len(y), 16))) @ rng.normal(size=(16, 200))
                       + rng.normal(size=(len(y), 200))} for i, sep in enumerate((0.3, 1.0, 3.0))}
    with pytest.raises(ValueError, match="could not be fitted"):
        estimators.score("nleep", cands["m0"]["features"], y, n_components=n_cls)
    out = rank_candidates(cands, y, estimators=["logme", "nleep"])
    assert "nleep" in out[0]["scores"] and out[0]["skipped"] == {}
    assert "'covariance_type': 'diag'" in out[0]["notes"]["nleep"]
    assert out[0]["scores"]["nleep"] == pytest.approx(estimators.score(
        "nleep", cands[out[0]["name"]]["features"], y, n_components=n_cls, covariance_type="diag"))
    assert out[0]["name"] == "m2"
    with pytest.raises(ValueError, match="covariance_type"):
        estimators.score("nleep", cands["m0"]["features"], y, covariance_type="banana")


def test_all_estimators_failing_raises():
    cands, y = _data()
    for c in cands.values():
        c.pop("probs")
    with pytest.raises(ValueError, match="no estimator could score"):
        rank_candidates(cands, y, estimators=["leep"])


def test_lower_is_better_estimators_are_flipped(monkeypatch):
    cands, y = _data()
    from estimators import _registry

    info = _registry.REGISTRY["logme"]
    monkeypatch.setitem(_registry.REGISTRY, "logme", info.__class__(**{**info.__dict__, "higher_is_better": False}))
    out = rank_candidates(cands, y, estimators=["logme"])
    assert [r["name"] for r in out][-1] == "good"


def test_prior_is_used_and_weighted():
    cands, y = _data()
    prior = {"noise": 0.9, "mid": 0.5, "good": 0.1}
    only_prior = rank_candidates(cands, y, prior=prior, weights={"logme": 0, "gbc": 0, "hscore_shrinkage": 0, "tmi": 0})
    assert [r["name"] for r in only_prior] == ["noise", "mid", "good"]
    assert only_prior[0]["scores"]["prior"] == 0.9
    # a candidate without a prior value gets the mean prior, not an advantage
    partial = rank_candidates(cands, y, prior={"noise": 1.0, "good": 0.0},
                              weights={"logme": 0, "gbc": 0, "hscore_shrinkage": 0, "tmi": 0})
    assert [r["name"] for r in partial] == ["noise", "mid", "good"]
    assert "prior" not in partial[1]["scores"]
    # with the default weights the prior moves scores but the estimators still count
    mixed = rank_candidates(cands, y, prior=prior)
    base = rank_candidates(cands, y)
    assert {r["name"]: r["score"] for r in mixed} != {r["name"]: r["score"] for r in base}
    assert DEFAULT_WEIGHTS["prior"] > 0


def test_precomputed_scores_without_features():
    y = np.arange(10) % 2
    cands = {"a": {"scores": {"logme": 1.0, "gbc": -2.0, "hscore_shrinkage": 0.1, "tmi": 3.0}},
             "b": {"scores": {"logme": 2.0, "gbc": -1.0, "hscore_shrinkage": 0.2, "tmi": 4.0}}}
    out = rank_candidates(cands, y)
    assert [r["name"] for r in out] == ["b", "a"]
    assert set(out[0]["scores"]) == {"logme", "gbc", "hscore_shrinkage", "tmi"}


def test_precomputed_scores_are_used():
    cands, y = _data()
    for name, v in zip(["good", "mid", "noise"], [-3.0, 2.0, 1.0]):
        cands[name]["scores"] = {"logme": v}
    out = rank_candidates(cands, y, estimators=["logme"])
    assert [r["name"] for r in out] == ["mid", "noise", "good"]
    assert out[0]["scores"]["logme"] == 2.0


def test_static_is_reported_with_weight_zero_by_default():
    cands, y = _data()
    cands["noise"]["meta"] = {"params": 10**9, "source_size": 10**7}
    default = rank_candidates(cands, y)
    assert default[-1]["name"] == "noise" and DEFAULT_WEIGHTS["static"] == 0.0
    assert default[-1]["scores"]["static"] == pytest.approx(9 + math.log10(10**7 + 1))
    heavy = rank_candidates(cands, y, weights={"static": 100.0})
    assert heavy[0]["name"] == "noise"


def test_static_only_and_static_score():
    y = np.arange(10) % 2
    cands = {"small": {"meta": {"params": 1e3, "source_size": 10}}, "big": {"meta": {"params": 1e6, "source_size": 10}}}
    out = rank_candidates(cands, y, estimators=["static"])
    assert [r["name"] for r in out] == ["big", "small"]
    assert [r["name"] for r in rank_candidates(cands, y)] == ["big", "small"]  # default: static alone
    assert static_score({"params": 100}) == pytest.approx(2.0)
    assert static_score(None) is None
    assert static_score({"source_size": 999}) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="params"):
        static_score({"params": -1})


def test_estimator_params_are_passed(monkeypatch):
    cands, y = _data()
    seen = {}
    from estimators import ranking

    def fake_score(name, X, y, **kw):
        seen[name] = kw
        return float(np.asarray(X).std())

    monkeypatch.setattr(ranking, "_score", fake_score)
    rank_candidates(cands, y, estimators=["logme"], logme={"regression": False})
    assert seen["logme"] == {"regression": False}


@pytest.mark.parametrize("bad, match", [
    ({}, "non-empty"),
    ({"a": [1, 2]}, "must be a dict"),
    ({"a": {"features": np.zeros((5, 2))}}, "shape"),
    ({"a": {"feature": np.zeros((90, 2))}}, "unknown key"),
    ({"a": {"features": np.zeros((90, 2)), "meta": 3}}, "meta must be a dict"),
])
def test_validation_of_candidates(bad, match):
    y = np.arange(N) % C
    with pytest.raises(ValueError, match=match):
        rank_candidates(bad, y)


def test_validation_of_options():
    cands, y = _data()
    with pytest.raises(ValueError, match="unknown estimator"):
        rank_candidates(cands, y, estimators=["nope"])
    with pytest.raises(ValueError, match="needs 'domains'"):
        rank_candidates(cands, y, estimators=["mmd"])
    with pytest.raises(ValueError, match="list of names"):
        rank_candidates(cands, y, estimators="logme")
    with pytest.raises(ValueError, match="weight"):
        rank_candidates(cands, y, weights={"logme": -1})
    with pytest.raises(ValueError, match="unknown keyword"):
        rank_candidates(cands, y, top_k=3)
    with pytest.raises(ValueError, match="prior must be a dict"):
        rank_candidates(cands, y, prior=[1, 2, 3])
    with pytest.raises(ValueError, match="1-D"):
        rank_candidates(cands, np.zeros((N, 2)))


def test_observed_prior_weighted_mean_by_hand():
    observed = {"t1": {"a": 1.0, "b": 3.0}, "t2": {"a": 5.0, "b": 1.0, "c": 2.0}}
    p = observed_prior(observed, {"t1": 3.0, "t2": 1.0}, normalize="none")
    assert p == pytest.approx({"a": (3 * 1 + 5) / 4, "b": (3 * 3 + 1) / 4, "c": 2.0})
    # negative / missing similarities count as 0; all-zero falls back to the plain mean
    assert observed_prior(observed, {"t1": -1.0}, normalize="none") == pytest.approx({"a": 3.0, "b": 2.0, "c": 2.0})
    assert observed_prior(observed, {"t2": 1.0}, normalize="none") == pytest.approx({"a": 5.0, "b": 1.0, "c": 2.0})
    # z-scoring puts targets with different scales on par
    z = observed_prior({"t1": {"a": 0.1, "b": 0.2}, "t2": {"a": 90.0, "b": 10.0}}, {"t1": 1, "t2": 1})
    assert z == pytest.approx({"a": 0.0, "b": 0.0})
    assert observed_prior({}, {}) == {}
    with pytest.raises(ValueError, match="normalize"):
        observed_prior(observed, {}, normalize="rank")
    with pytest.raises(ValueError, match="finite"):
        observed_prior({"t": {"a": float("nan")}}, {"t": 1.0})


def test_profile_similarity():
    profiles = {"same": {"a": 1, "b": 2, "c": 3, "d": 4}, "reverse": {"a": 4, "b": 3, "c": 2, "d": 1},
                "disjoint": {"x": 1.0}}
    s = profile_similarity(profiles, {"a": 10, "b": 20, "c": 30})
    assert s["same"] == pytest.approx(1.0) and s["reverse"] == 0.0 and s["disjoint"] == 0.0
    # one shared source: a kernel on the level difference
    k = profile_similarity({"near": {"a": 1.0}, "far": {"a": 5.0}}, {"a": 1.2}, bandwidth=1.0)
    assert k["near"] == pytest.approx(math.exp(-0.04 / 2)) and k["far"] < k["near"]
    with pytest.raises(ValueError, match="bandwidth"):
        profile_similarity(profiles, {"a": 1}, bandwidth=0)
