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
