"""Ranking metrics of estimators.evaluation: hand-computed values, ties, NaN policy, validation."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from estimators import evaluation as ev

# 5 candidates; gold order (best first): c, a, e, b, d
GOLD = np.array([0.80, 0.60, 0.90, 0.50, 0.70])
#                      a     b     c     d     e
SCORES = np.array([3.0, 5.0, 4.0, 1.0, 2.0])  # predicted order: b, c, a, e, d


def test_correlations_match_definitions():
    # tau-b by hand: count concordant / discordant pairs (no ties here)
    P = Q = 0
    for i in range(5):
        for j in range(i + 1, 5):
            sgn = np.sign(SCORES[i] - SCORES[j]) * np.sign(GOLD[i] - GOLD[j])
            P += sgn > 0
            Q += sgn < 0
    assert ev.kendall_tau(SCORES, GOLD) == pytest.approx((P - Q) / 10)
    rs, rg = stats.rankdata(SCORES), stats.rankdata(GOLD)
    assert ev.spearman(SCORES, GOLD) == pytest.approx(np.corrcoef(rs, rg)[0, 1])
    assert ev.pearson(SCORES, GOLD) == pytest.approx(np.corrcoef(SCORES, GOLD)[0, 1])
    assert ev.weighted_tau(SCORES, GOLD) == pytest.approx(stats.weightedtau(SCORES, GOLD).statistic)
    assert ev.kendall_tau(GOLD, GOLD) == pytest.approx(1.0) and ev.weighted_tau(GOLD, GOLD) == pytest.approx(1.0)
    assert ev.kendall_tau(-GOLD, GOLD) == pytest.approx(-1.0)


def test_kendall_tau_b_with_ties():
    s = np.array([1.0, 1.0, 2.0, 3.0])
    g = np.array([1.0, 2.0, 2.0, 3.0])
    # pairs: (0,1) tied in s only, (0,2) C, (0,3) C, (1,2) tied in g only, (1,3) C, (2,3) C
    P, Q, Ts, Tg = 4, 0, 1, 1
    expected = (P - Q) / math.sqrt((P + Q + Ts) * (P + Q + Tg))
    assert ev.kendall_tau(s, g) == pytest.approx(expected)


def test_constant_input_gives_nan_correlation():
    for fn in (ev.kendall_tau, ev.weighted_tau, ev.spearman, ev.pearson):
        assert math.isnan(fn(np.ones(4), GOLD[:4]))


def test_top_k_precision():
    # predicted top-2 {b, c}; gold top-2 {c, a} -> 1/2
    assert ev.top_k_precision(SCORES, GOLD, 2) == 0.5
    # predicted top-3 {b, c, a}; gold top-3 {c, a, e} -> 2/3
    assert ev.top_k_precision(SCORES, GOLD, 3) == pytest.approx(2 / 3)
    assert ev.top_k_precision(SCORES, GOLD, 1) == 0.0
    assert ev.top_k_precision(GOLD, GOLD, 3) == 1.0
    assert ev.top_k_precision(SCORES, GOLD, 5) == 1.0


def test_top_k_precision_gold_ties_at_boundary_count_as_relevant():
    g = np.array([0.9, 0.5, 0.5, 0.1])
    s = np.array([0.0, 1.0, 0.5, 0.2])  # predicted order: 1, 2, 3, 0
    # gold top-2 threshold is 0.5: candidates 0, 1, 2 are all relevant
    assert ev.top_k_precision(s, g, 2) == 1.0


def test_regret_esm_form():
    # best overall 0.90 (c); predicted top-1 = b (0.60) -> (0.9 - 0.6) / 0.9
    assert ev.regret_at_k(SCORES, GOLD, 1, form="esm") == pytest.approx(0.3 / 0.9)
    # predicted top-2 contains c -> no regret
    assert ev.regret_at_k(SCORES, GOLD, 2, form="esm") == 0.0
    assert ev.regret_at_k(SCORES, GOLD, 1, form="esm", relative=False) == pytest.approx(0.3)


def test_regret_taskweb_form():
    # gold top-3 mean (0.9 + 0.8 + 0.7) / 3 = 0.8; predicted top-3 {b, c, a}: (0.6 + 0.9 + 0.8) / 3
    ideal, got = 0.8, (0.6 + 0.9 + 0.8) / 3
    assert ev.regret_at_k(SCORES, GOLD, 3, form="taskweb") == pytest.approx((ideal - got) / ideal)
    # k=1 coincides with the ESM form
    assert ev.regret_at_k(SCORES, GOLD, 1, form="taskweb") == pytest.approx(ev.regret_at_k(SCORES, GOLD, 1))
    assert ev.regret_at_k(GOLD, GOLD, 3, form="taskweb") == 0.0


def test_regret_relative_needs_positive_gold():
    with pytest.raises(ev.UndefinedMetric):
        ev.regret_at_k(SCORES, GOLD - 1.0, 1)
    assert ev.regret_at_k(SCORES, GOLD - 1.0, 1, relative=False) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="form"):
        ev.regret_at_k(SCORES, GOLD, 1, form="other")


def test_ndcg_linear_and_exponential_by_hand():
    order = [1, 2, 0, 4, 3]  # b, c, a, e, d
    disc = 1 / np.log2(np.arange(2, 7))
    ideal = np.sort(GOLD)[::-1]
    assert ev.ndcg_at_k(SCORES, GOLD) == pytest.approx(GOLD[order] @ disc / (ideal @ disc))
    g2 = 2.0 ** GOLD - 1
    assert ev.ndcg_at_k(SCORES, GOLD, gains="exponential") == pytest.approx(
        g2[order] @ disc / (np.sort(g2)[::-1] @ disc)
    )
    assert ev.ndcg_at_k(SCORES, GOLD, 2) == pytest.approx(GOLD[order][:2] @ disc[:2] / (ideal[:2] @ disc[:2]))
    assert ev.ndcg_at_k(GOLD, GOLD, gains="exponential") == pytest.approx(1.0)


def test_ndcg_rank_relevance_is_taskweb_form():
    # TaskWeb: relevance = n - (0-based gold rank), gains 2^rel - 1, full list
    rel = np.array([4, 2, 5, 1, 3], dtype=float)
    order = [1, 2, 0, 4, 3]
    disc = 1 / np.log2(np.arange(2, 7))
    gains = 2.0 ** rel - 1
    expected = gains[order] @ disc / (np.sort(gains)[::-1] @ disc)
    assert ev.ndcg_at_k(SCORES, GOLD, gains="exponential", relevance="rank") == pytest.approx(expected)


def test_ndcg_undefined_cases():
    with pytest.raises(ev.UndefinedMetric):
        ev.ndcg_at_k(SCORES, GOLD - 1.0)  # negative gains
    with pytest.raises(ev.UndefinedMetric):
        ev.ndcg_at_k(SCORES, np.zeros(5))  # all gains zero
    assert ev.ndcg_at_k(SCORES, GOLD - 1.0, relevance="rank") > 0


def test_score_ties_are_broken_pessimistically():
    s = np.ones(5)
    # a constant predictor gets the worst order: the lowest gold first
    assert ev.regret_at_k(s, GOLD, 1) == pytest.approx((0.9 - 0.5) / 0.9)
    assert ev.top_k_precision(s, GOLD, 1) == 0.0
    perm = np.array([3, 0, 4, 1, 2])
    for k in (1, 2, 3):
        assert ev.regret_at_k(s[perm], GOLD[perm], k) == ev.regret_at_k(s, GOLD, k)
        assert ev.ndcg_at_k(s[perm], GOLD[perm], k) == pytest.approx(ev.ndcg_at_k(s, GOLD, k))


def test_metrics_do_not_depend_on_candidate_order():
    rng = np.random.default_rng(0)
    s, g = rng.normal(size=12), rng.uniform(0.1, 1.0, size=12)
    perm = rng.permutation(12)
    a, b = ev.summarize(s, g), ev.summarize(s[perm], g[perm])
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key]), key


def test_nan_policy():
    s = SCORES.copy()
    s[3] = np.nan
    with pytest.raises(ValueError, match="nan_policy"):
        ev.kendall_tau(s, GOLD)
    keep = np.isfinite(s)
    assert ev.kendall_tau(s, GOLD, nan_policy="omit") == ev.kendall_tau(SCORES[keep], GOLD[keep])
    g = GOLD.copy()
    g[0] = np.inf
    assert ev.regret_at_k(SCORES, g, 1, nan_policy="omit") == ev.regret_at_k(SCORES[1:], GOLD[1:], 1)
    with pytest.raises(ValueError):
        ev.regret_at_k(SCORES, g, 1)
    with pytest.raises(ValueError, match="nan_policy"):
        ev.pearson(SCORES, GOLD, nan_policy="ignore")


def test_input_validation():
    with pytest.raises(ValueError, match="candidates"):
        ev.spearman(SCORES, GOLD[:4])
    with pytest.raises(ValueError, match="1-D"):
        ev.pearson(SCORES[:, None], GOLD[:, None])
    with pytest.raises(ValueError, match="at least 2"):
        ev.kendall_tau([1.0], [2.0])
    with pytest.raises(ValueError, match="numeric"):
        ev.pearson(["a", "b"], [1.0, 2.0])
    with pytest.raises(ev.UndefinedMetric, match="larger than"):
        ev.top_k_precision(SCORES, GOLD, 6)
    for bad_k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            ev.top_k_precision(SCORES, GOLD, bad_k)


def test_summarize():
    out = ev.summarize(SCORES, GOLD, ks=(1, 3, 10))
    assert out["n"] == 5
    assert out["kendall_tau"] == ev.kendall_tau(SCORES, GOLD)
    assert out["regret@1_esm"] == pytest.approx(0.3 / 0.9)
    assert out["regret@3_taskweb"] == ev.regret_at_k(SCORES, GOLD, 3, form="taskweb")
    assert out["precision@3"] == pytest.approx(2 / 3)
    assert out["ndcg_exp@3"] == ev.ndcg_at_k(SCORES, GOLD, 3, gains="exponential")
    assert out["ndcg_rank"] == ev.ndcg_at_k(SCORES, GOLD, gains="exponential", relevance="rank")
    # k larger than the candidate pool is undefined -> NaN, not an error
    assert math.isnan(out["precision@10"]) and math.isnan(out["ndcg@10"])
    # negative gold: relative regret / value-NDCG undefined -> NaN; rank metrics still defined
    neg = ev.summarize(SCORES, GOLD - 1.0)
    assert math.isnan(neg["regret@1_esm"]) and math.isnan(neg["ndcg"])
    assert neg["spearman"] == out["spearman"] and neg["ndcg_rank"] == out["ndcg_rank"]
    with pytest.raises(ValueError):
        ev.summarize(SCORES, GOLD[:3])
