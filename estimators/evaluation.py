"""Metrics that compare a predicted ranking of candidates with their observed transfer.

Every metric takes two 1-D arrays over the same candidates:

* ``scores``: the prediction (e.g. an estimator's value per source model / task), higher = better;
* ``gold``: the observed transfer performance of each candidate (accuracy after fine-tuning,
  ...), higher = better.

Conventions shared by all metrics
---------------------------------
* **Lengths** must match; at least 2 candidates for correlations, at least 1 otherwise.
* **Missing values.** NaN or +-inf in either array count as missing. ``nan_policy="raise"``
  (default) raises ``ValueError``; ``nan_policy="omit"`` drops every candidate with a missing
  value in either array before computing the metric.
* **The predicted top-k.** Candidates are ordered by ``scores`` descending. Ties in ``scores``
  are broken *pessimistically* (the tied candidate with the lower gold value is ranked first),
  so every top-k metric is a guaranteed value, independent of the candidates' order in the
  arrays, and a constant predictor cannot look good by luck.
* **The gold top-k.** For precision, the relevant set is every candidate whose gold value is at
  least the k-th largest gold value (candidates tied at the boundary all count as relevant).
* **Undefined values.** Correlations of a constant array are undefined and returned as NaN (as
  scipy does). A metric whose definition fails on the given values (``k`` larger than the number
  of candidates, a relative regret with a non-positive denominator, NDCG with negative gains or
  all-zero gains) raises ``UndefinedMetric`` (a ``ValueError``); ``summarize`` reports NaN.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "UndefinedMetric",
    "kendall_tau",
    "weighted_tau",
    "spearman",
    "pearson",
    "top_k_precision",
    "regret_at_k",
    "ndcg_at_k",
    "summarize",
]


class UndefinedMetric(ValueError):
    """The metric is not defined for these values (see the module docstring)."""


def _pair(scores: ArrayLike, gold: ArrayLike, nan_policy: str, min_len: int = 1) -> tuple[np.ndarray, np.ndarray]:
    if nan_policy not in ("raise", "omit"):
        raise ValueError(f"nan_policy must be 'raise' or 'omit', got {nan_policy!r}")
    try:
        s = np.asarray(scores, dtype=np.float64)
        g = np.asarray(gold, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"scores and gold must be numeric 1-D arrays: {exc}") from None
    if s.ndim != 1 or g.ndim != 1:
        raise ValueError(f"scores and gold must be 1-D arrays over candidates, got shapes {s.shape} and {g.shape}")
    if s.shape[0] != g.shape[0]:
        raise ValueError(f"scores has {s.shape[0]} candidates but gold has {g.shape[0]}")
    ok = np.isfinite(s) & np.isfinite(g)
    if not ok.all():
        if nan_policy == "raise":
            raise ValueError(
                f"{int((~ok).sum())} candidate(s) have a NaN or infinite score or gold value; "
                "remove them or pass nan_policy='omit'"
            )
        s, g = s[ok], g[ok]
    if s.shape[0] < min_len:
        raise ValueError(f"need at least {min_len} candidate(s) with finite values, got {s.shape[0]}")
    return s, g


def _check_k(k: object, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > n:
        raise UndefinedMetric(f"k={k} is larger than the number of candidates ({n})")
    return int(k)


def _predicted_order(s: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Indices by score descending; ties broken pessimistically (lower gold first)."""
    return np.lexsort((g, -s))


def _corr(fn: Callable[..., Any], s: np.ndarray, g: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if np.ptp(s) == 0 or np.ptp(g) == 0:
            return math.nan
        return float(fn(s, g))


def kendall_tau(scores: ArrayLike, gold: ArrayLike, *, nan_policy: str = "raise") -> float:
    """Kendall's tau-b between scores and gold, in [-1, 1].

    ``tau_b = (P - Q) / sqrt((P + Q + T_s) (P + Q + T_g))`` with P / Q the concordant /
    discordant pairs and T_s / T_g the pairs tied only in scores / only in gold (scipy's
    ``kendalltau``, variant "b"). NaN when either array is constant.
    """
    s, g = _pair(scores, gold, nan_policy, 2)
    return _corr(lambda a, b: stats.kendalltau(a, b, variant="b").statistic, s, g)


def weighted_tau(scores: ArrayLike, gold: ArrayLike, *, nan_policy: str = "raise") -> float:
    """Weighted Kendall tau (Vigna 2015) as ``scipy.stats.weightedtau(scores, gold)``, in [-1, 1].

    Exchanges are weighted by the hyperbolic weigher ``1 / (r + 1)`` of the candidates' ranks
    (rank 0 = best), additively, averaged over the rankings by scores and by gold
    (``rank=True``): mistakes among the top candidates cost most. This is the correlation used
    by LogME and most later transferability papers. NaN when either array is constant.
    """
    s, g = _pair(scores, gold, nan_policy, 2)
    return _corr(lambda a, b: stats.weightedtau(a, b).statistic, s, g)


def spearman(scores: ArrayLike, gold: ArrayLike, *, nan_policy: str = "raise") -> float:
    """Spearman's rho: Pearson correlation of the ranks (ties get their average rank). NaN if constant."""
    s, g = _pair(scores, gold, nan_policy, 2)
    return _corr(lambda a, b: stats.spearmanr(a, b).statistic, s, g)


def pearson(scores: ArrayLike, gold: ArrayLike, *, nan_policy: str = "raise") -> float:
    """Pearson's r = cov(scores, gold) / (std(scores) std(gold)). NaN when either is constant."""
    s, g = _pair(scores, gold, nan_policy, 2)
    return _corr(lambda a, b: stats.pearsonr(a, b).statistic, s, g)


def top_k_precision(scores: ArrayLike, gold: ArrayLike, k: int, *, nan_policy: str = "raise") -> float:
    """Top-k precision: ``|P_k intersect G_k| / k``, in [0, 1].

    ``P_k``: the k candidates ranked highest by scores (pessimistic tie-breaking); ``G_k``: the
    candidates whose gold value is at least the k-th largest gold value.
    """
    s, g = _pair(scores, gold, nan_policy)
    k = _check_k(k, s.shape[0])
    threshold = np.sort(g)[::-1][k - 1]
    picked = _predicted_order(s, g)[:k]
    return float(np.count_nonzero(g[picked] >= threshold) / k)


def regret_at_k(scores: ArrayLike, gold: ArrayLike, k: int, *, form: str = "esm", relative: bool = True,
                nan_policy: str = "raise") -> float:
    """Regret@k: how much transfer is lost by trusting the predicted top-k. Lower is better; 0 = no loss.

    ``form="esm"`` (Schulte et al., EMNLP 2024, "Less is More"): the best candidate among the
    predicted top-k P_k against the best overall,
    ``(max_i gold_i - max_{i in P_k} gold_i) / max_i gold_i``.
    ``form="taskweb"`` (Kim et al., EMNLP 2023, "TaskWeb"): the mean of the predicted top-k
    against the mean of the gold top-k,
    ``(mean(top-k gold values) - mean_{i in P_k} gold_i) / mean(top-k gold values)``.
    Both papers report the relative value times 100; this returns the fraction.
    ``relative=False`` returns the numerator alone (same units as gold). The relative form needs
    a positive denominator (e.g. accuracies), otherwise ``UndefinedMetric``.
    """
    s, g = _pair(scores, gold, nan_policy)
    k = _check_k(k, s.shape[0])
    picked = g[_predicted_order(s, g)[:k]]
    if form == "esm":
        ideal, got = float(g.max()), float(picked.max())
    elif form == "taskweb":
        ideal, got = float(np.sort(g)[::-1][:k].mean()), float(picked.mean())
    else:
        raise ValueError(f"form must be 'esm' or 'taskweb', got {form!r}")
    if not relative:
        return ideal - got
    if ideal <= 0:
        raise UndefinedMetric(f"relative regret needs a positive best gold value, got {ideal:g}; use relative=False")
    return (ideal - got) / ideal


def ndcg_at_k(scores: ArrayLike, gold: ArrayLike, k: int | None = None, *, gains: str = "linear",
              relevance: str = "value", nan_policy: str = "raise") -> float:
    """Normalised discounted cumulative gain of the predicted ranking, in [0, 1]; 1 = gold order.

    ``DCG@k = sum_{i=1..k} gain(rel_{pi(i)}) / log2(i + 1)`` with pi the predicted order
    (pessimistic tie-breaking); ``NDCG@k = DCG@k / IDCG@k``, IDCG@k the DCG of the gold order.
    ``k=None`` uses the whole list.

    * ``gains="linear"``: ``gain(r) = r``; ``gains="exponential"``: ``gain(r) = 2^r - 1``.
    * ``relevance="value"``: ``rel = gold`` (must be >= 0; the ESM paper uses exponential gains
      on gold accuracy x 100); ``relevance="rank"``: ``rel = n + 1 - gold rank`` (best = n,
      worst = 1, ties averaged), TaskWeb's exponential NDCG over the full list.
    """
    s, g = _pair(scores, gold, nan_policy)
    n = s.shape[0]
    k = n if k is None else _check_k(k, n)
    if relevance == "value":
        rel = g
        if rel.min() < 0:
            raise UndefinedMetric("NDCG with relevance='value' needs non-negative gold values; use relevance='rank'")
    elif relevance == "rank":
        rel = stats.rankdata(g, method="average")
    else:
        raise ValueError(f"relevance must be 'value' or 'rank', got {relevance!r}")
    if gains == "linear":
        gain = rel
    elif gains == "exponential":
        with np.errstate(over="raise"):
            try:
                gain = np.expm1(rel * math.log(2.0))
            except FloatingPointError:
                raise UndefinedMetric("exponential gains overflow: relevance values above ~1000") from None
    else:
        raise ValueError(f"gains must be 'linear' or 'exponential', got {gains!r}")
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = float(np.sort(gain)[::-1][:k] @ discount)
    if ideal <= 0:
        raise UndefinedMetric("all gains are zero: NDCG is undefined")
    return float(gain[_predicted_order(s, g)[:k]] @ discount / ideal)


def summarize(scores: ArrayLike, gold: ArrayLike, ks: Sequence[int] = (1, 3, 5), *,
              nan_policy: str = "raise") -> dict[str, float]:
    """All metrics at once, for benchmarks. Returns a flat ``{name: float}`` dict.

    Keys: ``n``, ``kendall_tau``, ``weighted_tau``, ``spearman``, ``pearson``, ``ndcg`` (linear
    gains on gold values, full list), ``ndcg_exp`` (exponential gains), ``ndcg_rank`` (TaskWeb's
    rank-relevance exponential NDCG), and per k in ``ks``: ``precision@k``, ``regret@k_esm``,
    ``regret@k_taskweb``, ``ndcg@k``, ``ndcg_exp@k``. A value that is undefined for this input
    (see the module docstring) is NaN; invalid input still raises ``ValueError``.
    """
    s, g = _pair(scores, gold, nan_policy)

    def value(fn: Callable[..., float], *args: Any, **kwargs: Any) -> float:
        try:
            return float(fn(s, g, *args, **kwargs))
        except UndefinedMetric:
            return math.nan

    out: dict[str, float] = {"n": float(s.shape[0])}
    for name, fn in (("kendall_tau", kendall_tau), ("weighted_tau", weighted_tau), ("spearman", spearman),
                     ("pearson", pearson)):
        out[name] = fn(s, g) if s.shape[0] >= 2 else math.nan
    out["ndcg"] = value(ndcg_at_k)
    out["ndcg_exp"] = value(ndcg_at_k, gains="exponential")
    out["ndcg_rank"] = value(ndcg_at_k, gains="exponential", relevance="rank")
    for k in ks:
        out[f"precision@{k}"] = value(top_k_precision, k)
        out[f"regret@{k}_esm"] = value(regret_at_k, k, form="esm")
        out[f"regret@{k}_taskweb"] = value(regret_at_k, k, form="taskweb")
        out[f"ndcg@{k}"] = value(ndcg_at_k, k)
        out[f"ndcg_exp@{k}"] = value(ndcg_at_k, k, gains="exponential")
    return out
