"""estimators.uncertainty: a bootstrap over the target's examples for every ranking."""
from __future__ import annotations

import numpy as np
import pytest

import estimators
from estimators.ranking import rank_candidates
from estimators.uncertainty import ALPHA, resamples, rescore, size_warnings


def _cands(seps, n=120, C=3, d=10, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    means = rng.normal(size=(C, d))
    return {f"m{i}": {"features": sep * means[y] + rng.normal(size=(n, d))} for i, sep in enumerate(seps)}, y


def test_resamples_are_stratified_and_seeded():
    y = np.array([0] * 7 + [1] * 3 + [2] * 5)
    idx = resamples(y, 50, seed=3)
    assert idx.shape == (50, 15)
    for rows in idx:
        assert np.array_equal(np.bincount(y[rows], minlength=3), [7, 3, 5])
    assert np.array_equal(idx, resamples(y, 50, seed=3)) and not np.array_equal(idx, resamples(y, 50, seed=4))
    with pytest.raises(ValueError, match="B must be"):
        resamples(y, 0)


def test_rescore_matches_the_estimator_on_each_resample_and_nleep_resamples_leep_only():
    cands, y = _cands([2.0])
    X = cands["m0"]["features"]
    idx = resamples(y, 4, seed=1)
    got = rescore("logme", X, y, idx, {})
    want = [estimators.score("logme", X[r], y[r]) for r in idx]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    nl = rescore("nleep", X, y, idx, {"n_components": 3})
    assert np.all(np.isfinite(nl)) and np.all(nl <= 0)
    # the identity resample gives N-LEEP itself (mixture fitted once on all rows)
    ident = rescore("nleep", X, y, np.arange(len(y))[None, :], {"n_components": 3})
    assert ident[0] == pytest.approx(estimators.score("nleep", X, y, n_components=3), rel=1e-9)


def test_clear_winner_is_alone_at_the_top_and_intervals_bracket_the_scores():
    cands, y = _cands([3.0, 0.5, 0.0])
    out = rank_candidates(cands, y, estimators=["logme"], bootstrap=100, seed=0)
    assert [r["name"] for r in out] == ["m0", "m1", "m2"]
    assert [r["tied_with_top"] for r in out] == [True, False, False]
    assert out[0]["p_top"] == 1.0 and sum(r["p_top"] for r in out) == pytest.approx(1.0)
    for r in out:
        lo, hi = r["interval"]
        assert lo <= hi and lo - 0.5 <= r["score"] <= hi + 0.5
        assert r["warnings"] == []
    # deterministic: same seed, same intervals
    again = rank_candidates(cands, y, estimators=["logme"], bootstrap=100, seed=0)
    assert [r["interval"] for r in again] == [r["interval"] for r in out]


def test_identical_candidates_are_tied_and_a_small_target_is_flagged():
    rng = np.random.default_rng(2)
    y = np.arange(12) % 3
    X = rng.normal(size=(12, 4))
    cands = {"a": {"features": X + 1e-3 * rng.normal(size=X.shape)}, "b": {"features": X}}
    out = rank_candidates(cands, y, estimators=["logme"], bootstrap=50)
    assert all(r["tied_with_top"] for r in out)
    warnings = out[0]["warnings"]
    assert any("n=12" in w for w in warnings) and any("cannot separate" in w for w in warnings)
    assert any("smallest of the 3 classes has 4" in w for w in size_warnings(y))
    assert size_warnings(np.arange(300) % 3) == []
    assert 0 < ALPHA < 0.5


def test_bootstrap_zero_and_validation():
    cands, y = _cands([1.0, 0.0])
    out = rank_candidates(cands, y, estimators=["logme"], bootstrap=0)
    assert "interval" not in out[0] and "tied_with_top" not in out[0]
    with pytest.raises(ValueError, match="bootstrap must be"):
        rank_candidates(cands, y, estimators=["logme"], bootstrap=-1)


def _table(cols):
    from estimators.ranking import ScoreTable

    t = ScoreTable(["a", "b", "c"])
    for c, vals in cols.items():
        t.add_column(c, higher_is_better=True)
        for cand, v in vals.items():
            t.set(c, cand, v)
    return t


def test_a_member_estimators_own_top_is_reported_in_tied_by():
    """Estimator disagreement: 'b' is clearly below the combined top 'a' on every resample (not
    tied_with_top), but it is member e2's own top: tied_by says e2; 'c' is separated everywhere.
    A zero-weight column, the target-agnostic 'static' and a constant column are not members."""
    from estimators.ranking import combine
    from estimators.uncertainty import bootstrap

    point = {"e1": {"a": 10.0, "b": 0.0, "c": 4.0}, "e2": {"a": 6.0, "b": 10.0, "c": 0.0},
             "flat": {"a": 1.0, "b": 1.0, "c": 1.0}, "static": {"a": 0.0, "b": 0.0, "c": 9.0},
             "w0": {"a": 0.0, "b": 0.0, "c": 9.0}}
    table = _table(point)
    weights = {"static": 0.0, "w0": 0.0}
    res = combine(table, weights)
    assert res.order[0][0] == "a"
    rng = np.random.default_rng(0)

    def values(cand, col, idx):  # tight draws around the point value: sampling noise is negligible
        noise = 0.0 if col == "flat" else 0.01  # the constant column stays constant
        return point[col][cand] + noise * rng.normal(size=idx.shape[0])

    y = np.arange(60) % 3
    boot = bootstrap(table, res, y, values, weights=weights, B=50, seed=0)
    assert boot.members == ["e1", "e2"]
    assert boot.tied_by == {"a": ["combined", "e1"], "b": ["e2"]}
    assert boot.tied_with_top == {"a": True, "b": False, "c": False}
    assert boot.for_candidate("b")["tied_by"] == ["e2"] and boot.summary()["members"] == ["e1", "e2"]
    assert boot.summary()["n_tied_with_top"] == 1


def test_a_member_tie_follows_that_members_own_bootstrap():
    """'c' is not e2's top, but e2's draws cannot separate it from e2's top 'b' (overlapping
    draws): tied_by says e2; with well-separated draws it does not. Neither is tied_with_top."""
    from estimators.ranking import combine
    from estimators.uncertainty import bootstrap

    point = {"e1": {"a": 10.0, "b": 0.0, "c": 0.0}, "e3": {"a": 10.0, "b": 0.0, "c": 0.0},
             "e2": {"a": 0.0, "b": 10.0, "c": 9.9}}
    table = _table(point)
    res = combine(table)
    y = np.arange(60) % 3
    for noise, tied in ((1.0, True), (0.001, False)):
        rng = np.random.default_rng(1)

        def values(cand, col, idx, noise=noise, rng=rng):
            return point[col][cand] + noise * rng.normal(size=idx.shape[0])

        boot = bootstrap(table, res, y, values, B=100, seed=0)
        assert res.order[0][0] == "a" and boot.tied_by["b"] == ["e2"]
        assert boot.tied_by.get("c", []) == (["e2"] if tied else [])
        assert not boot.tied_with_top["c"] and not boot.tied_with_top["b"]


def test_rank_candidates_carries_tied_by():
    cands, y = _cands([3.0, 0.5, 0.0])
    out = rank_candidates(cands, y, estimators=["logme", "gbc"], bootstrap=50, seed=0)
    assert out[0]["tied_by"][0] == "combined"
    assert all(r["tied_with_top"] == ("combined" in r["tied_by"]) for r in out)
    assert not out[-1]["tied_with_top"]
