"""How sure is a ranking? A bootstrap over the target's examples.

The target's examples are resampled ``B`` times (stratified: each class keeps its count, drawn
with replacement, so every estimator sees every class); on each resample every candidate is
re-scored by every estimator of the ranking (with the settings the ranking used, fallbacks
included) and the resample's table goes through the same ``estimators.ranking.combine``. Per
candidate that gives ``B`` combined scores: their 2.5-97.5 percentiles are the interval.

Two sources of doubt are tested, both with the same one-sided bootstrap test at ``ALPHA`` = 5%
("the top is better": the candidate scores at least as high as the top in at least 5% of the
resamples):

1. sampling noise of the target's examples, on the combined score: the candidate is tied with the
   one ranked first. This is ``tied_with_top`` ("indistinguishable from the top"), and
   ``tied_by`` then contains ``"combined"``;
2. disagreement between the estimators the ranking combines (positive weight, varying with the
   target's examples, i.e. not ``static`` / ``prior``, and not constant across the candidates): a
   candidate that some member estimator ranks first, or that member's bootstrap cannot separate
   from the member's own top -- ``tied_by`` contains the member's name (information only).

Which set ``tied_with_top`` is was chosen leave-one-benchmark-out (``bench/results/coverage.md``,
``python -m bench.coverage``): for each benchmark, the smaller (mean relative size) of the two
candidate definitions -- (1) alone, or (1) or (2) -- whose coverage of the gold-best source is
>= 90% on the *other* benchmarks; (1) alone was chosen on every fold (held out: 96% of 26
targets, mean size 2.9 of 9.2 candidates), while (1) or (2) covers every target only by holding
73% of the candidates.

Cost is bounded by resampling what is cheap: probability-based estimators (LEEP, NCE) and the
closed-form features estimators (LogME, H-scores, ETran, GBC, ...) are recomputed on each
resample (``B`` x their cost, each at most a few SVDs of the n x d features); N-LEEP's mixture is
fitted once, on all examples, and only its LEEP part (per-example posteriors -> empirical
conditional -> mean log-likelihood) is resampled (``estimators.nleep.nleep_posteriors``). The
default ``B = 100`` with a fixed seed makes the result deterministic.

A target too small to separate candidates gets a warning with the reason: fewer than
``MIN_EXAMPLES`` examples, fewer than ``MIN_PER_CLASS`` examples in some class, or (after the
bootstrap) every candidate indistinguishable from the top.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import info as _info
from . import score as _score
from .ranking import Combined, RankingFailed, ScoreTable, combine

__all__ = ["resamples", "rescore", "bootstrap", "Bootstrap", "size_warnings", "DEFAULT_B", "ALPHA"]

#: Resamples per ranking (deterministic: seeded).
DEFAULT_B = 100
#: A candidate scoring at least as high as the top in >= ALPHA of the resamples is tied with it.
ALPHA = 0.05
#: Targets below these sizes get a warning: the scores of a few examples are noise.
MIN_EXAMPLES = 30
MIN_PER_CLASS = 5


def resamples(y: np.ndarray, B: int, seed: int = 0) -> np.ndarray:
    """(B, n) row indices: each class's rows drawn with replacement, its count kept."""
    y = np.asarray(y)
    if B < 1:
        raise ValueError(f"B must be >= 1, got {B}")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    out = np.empty((B, y.shape[0]), dtype=np.int64)
    pos = 0
    for c in classes:
        rows = np.flatnonzero(y == c)
        out[:, pos:pos + rows.size] = rows[rng.integers(0, rows.size, size=(B, rows.size))]
        pos += rows.size
    return out


def rescore(estimator: str, X: np.ndarray, y: np.ndarray, idx: np.ndarray, params: Mapping[str, Any],
            **fixed: Any) -> np.ndarray:
    """``estimator``'s value on each resample ``idx[b]`` of (X, y): (B,) values, NaN where it fails.

    ``fixed`` are passed unchanged (e.g. ``esm=`` for the ``esm_*`` estimators). N-LEEP fits its
    mixture once on all rows and resamples only the LEEP of its posteriors."""
    from .leep import leep_resamples

    y = np.asarray(y)
    n_classes = int(np.unique(y).shape[0])
    out = np.full(idx.shape[0], np.nan)
    if estimator == "nleep":
        from .nleep import nleep_posteriors

        try:
            P = nleep_posteriors(X, y, **dict(params))
        except ValueError:
            return out
        return leep_resamples(P, y, n_classes, idx)  # = leep_from_probs(P[rows], y[rows], C) per resample
    for b, rows in enumerate(idx):
        try:
            out[b] = _score(estimator, np.asarray(X)[rows], y[rows], **dict(params), **fixed)
        except ValueError:
            continue
    return out


def size_warnings(y: np.ndarray) -> list[str]:
    """Why a target may be too small to separate candidates (empty when it is not)."""
    y = np.asarray(y)
    _, counts = np.unique(y, return_counts=True)
    n, C, smallest = int(y.shape[0]), int(counts.size), int(counts.min())
    out = []
    if n < MIN_EXAMPLES:
        out.append(f"the target has only n={n} examples ({C} classes): scores of so few examples are noisy")
    if smallest < MIN_PER_CLASS:
        out.append(f"the smallest of the {C} classes has {smallest} example(s) (n={n}): estimators see "
                   "little of it")
    return out


@dataclass
class Bootstrap:
    """Per candidate: interval of the combined score, the share of resamples where it ranks first,
    and whether it is statistically indistinguishable from the top."""

    B: int
    seed: int
    interval: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    p_top: dict[str, float] = field(default_factory=dict)
    tied_with_top: dict[str, bool] = field(default_factory=dict)
    #: the tests a candidate is indistinguishable from the top under: ``"combined"`` (=
    #: ``tied_with_top``) and / or the member estimators (their own bootstrap against their own top)
    tied_by: dict[str, list[str]] = field(default_factory=dict)
    #: the member estimators tested for ``tied_by``
    members: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def for_candidate(self, name: str) -> dict[str, Any]:
        iv = self.interval.get(name)
        return {"interval": None if iv is None else [iv[0], iv[1]], "p_top": self.p_top.get(name),
                "tied_with_top": self.tied_with_top.get(name, False), "tied_by": list(self.tied_by.get(name, []))}

    def summary(self) -> dict[str, Any]:
        return {"method": "bootstrap over the target's examples (stratified), percentile interval of the "
                          "combined score; tied_with_top: scores >= the top's in at least "
                          f"{ALPHA:.0%} of the resamples; tied_by: the same test on the combined score "
                          "('combined') and on each member estimator's own score against that member's top",
                "B": self.B,
                "seed": self.seed, "members": list(self.members),
                "n_tied_with_top": sum(self.tied_with_top.values()), "warnings": list(self.warnings)}


CellValues = Callable[[str, str, np.ndarray], np.ndarray]


def bootstrap(point: ScoreTable, result: Combined, y: np.ndarray, values: CellValues, *,
              weights: Mapping[str, float] | None = None, prior: Mapping[str, float | None] | None = None,
              B: int = DEFAULT_B, seed: int = 0) -> Bootstrap:
    """Bootstrap a ranking: ``point`` is the ranking's table, ``result`` its ``combine``.

    ``values(candidate, column, idx)`` returns the column's (B,) values on the resamples ``idx``
    (e.g. via ``rescore``); it is called for the columns ``combine`` kept and the cells that have
    a value. Each resample's table (same columns, same unavailable cells) is combined with the
    same ``weights`` and ``prior``; a resample that cannot be combined is left out."""
    y = np.asarray(y)
    idx = resamples(y, B, seed)
    cols = [c for c in point.columns if c not in result.skipped]
    draws: dict[str, dict[str, np.ndarray]] = {}
    for cand in point.candidates:
        draws[cand] = {c: values(cand, c, idx) for c in cols if point.value(c, cand) is not None}
    order = [name for name, _, _ in result.order]
    samples = {name: np.full(B, np.nan) for name in order}
    for b in range(B):
        table = ScoreTable(list(point.candidates))
        for c in cols:
            table.add_column(c, higher_is_better=point.higher_is_better[c])
            for cand in point.candidates:
                v = draws[cand].get(c)
                if v is not None and np.isfinite(v[b]):
                    table.set(c, cand, float(v[b]))
                elif cand in point.unavailable[c]:
                    table.mark_unavailable(c, cand, point.unavailable[c][cand])
        try:
            res_b = combine(table, weights, prior)
        except RankingFailed:
            continue
        for name, s, _ in res_b.order:
            if s is not None:
                samples[name][b] = s
    out = Bootstrap(B=B, seed=seed, warnings=size_warnings(y))
    scored = [n for n, s, _ in result.order if s is not None]
    top = scored[0] if scored else None
    ok = np.all(np.isfinite(np.stack([samples[n] for n in scored])), axis=0) if scored else np.zeros(B, bool)
    stacked = {n: samples[n][ok] for n in order}
    for name in order:
        v = stacked[name]
        if name not in scored or v.size == 0 or top is None:
            out.interval[name] = None
            out.tied_with_top[name] = False
            continue
        lo, hi = np.percentile(v, [2.5, 97.5])
        out.interval[name] = (float(lo), float(hi))
        if name == top or bool(np.mean(v >= stacked[top]) >= ALPHA):
            out.tied_by[name] = ["combined"]
    # (2) estimator disagreement: each member's own top, and the candidates its bootstrap cannot separate from it
    out.members = _members(point, result, scored)
    for c in out.members:
        sign = 1.0 if point.higher_is_better[c] else -1.0
        have = [n for n in scored if point.value(c, n) is not None]
        if not have:
            continue
        top_c = max(have, key=lambda n: (sign * float(point.value(c, n) or 0.0), -scored.index(n)))
        d_top = sign * draws[top_c][c]
        for n in have:
            d = sign * draws[n][c]
            both = np.isfinite(d) & np.isfinite(d_top)
            if n == top_c or (both.any() and bool(np.mean(d[both] >= d_top[both]) >= ALPHA)):
                out.tied_by.setdefault(n, []).append(c)
    for name in order:
        out.tied_with_top[name] = "combined" in out.tied_by.get(name, [])
    if scored and int(ok.sum()) > 0:
        M = np.stack([stacked[n] for n in scored])  # (k, B') in ranking order
        best = np.argmax(M, axis=0)  # ties: the higher-ranked candidate
        for i, n in enumerate(scored):
            out.p_top[n] = float(np.mean(best == i))
    if len(scored) > 1 and all(out.tied_with_top.get(n) for n in scored):
        out.warnings.append(f"the target cannot separate the candidates: all {len(scored)} are statistically "
                            f"indistinguishable from the top (bootstrap, B={B})")
    if int(ok.sum()) < B:
        out.warnings.append(f"{B - int(ok.sum())} of {B} resamples could not be scored and were left out")
    return out


def _members(point: ScoreTable, result: Combined, scored: list[str]) -> list[str]:
    """The columns whose own top enters the tied set: combined with positive weight, not the
    target-agnostic ``static`` / ``prior``, and not constant across the scored candidates."""
    out = []
    for c in point.columns:
        if result.weights.get(c, 0.0) <= 0 or c in ("static", "prior") or c in result.skipped:
            continue
        zs = [z.get(c) for n, s, z in result.order if n in scored]
        if any(v is not None and v != 0.0 for v in zs):
            out.append(c)
    return out


def features_values(candidates: Mapping[str, Mapping[str, Any]], y: np.ndarray,
                    params: Mapping[str, Mapping[str, Any]]) -> CellValues:
    """``values`` for ``bootstrap`` from the library's candidates (``features`` / ``probs``); the
    ``static`` and ``prior`` columns do not depend on the target's examples (constant)."""

    def values(cand: str, column: str, idx: np.ndarray) -> np.ndarray:
        c = candidates[cand]
        X = None if column == "static" else c.get(_info(column).needs)
        if X is None:  # static (target-agnostic) or a precomputed value only: held constant
            if column == "static":
                from .ranking import static_score

                v = static_score(c.get("meta"))
            else:
                v = (c.get("scores") or {}).get(column)
            return np.full(idx.shape[0], np.nan if v is None else float(v))
        return rescore(column, np.asarray(X), y, idx, params.get(column, {}))

    return values
