"""The default ranker: combine several transferability estimators (and observed results) into one order.

``rank_candidates`` (contract in shared/DESIGN.md) scores every candidate source with a small set of
complementary estimators, puts each estimator's scores on a common scale across the candidates
(direction-corrected z-scores), and averages them with weights:

    combined(c) = sum_e w_e * z_e(c) / sum_e w_e,   z_e(c) = (s_e(c) - mean_c s_e) / std_c s_e

One core serves the library, the CLI and the service alike: the scores go into a ``ScoreTable``
(candidates x estimators, raw values, per-cell errors / fallback notes) and ONE function,
``combine``, turns the table into the order; its docstring states the failure and fallback
policy (an estimator that fails for any candidate is skipped for all; fallback settings are
applied to all candidates; a column within floating-point noise contributes nothing; nothing
to rank by is ``RankingFailed``). ``rank_candidates`` = ``build_table`` + ``combine``; the
service fills the same table from its score cache and calls the same ``combine``. Ties are
broken by candidate name, so the output is deterministic.

Default sets, chosen out of benchmark (``bench/results/lobo.md``, made by ``python -m bench.lobo``
from the committed score tables of five benchmarks: model_zoo, text_tasks, image_zoo2,
text_models, regression). Every z-mean design of 1-4 of the library's features/probs estimators
was scored on each benchmark; for each benchmark the design was chosen on the *other four* and
scored on it (leave-one-benchmark-out, LOBO). **Rule: ``worst``** -- the design with the highest
worst-benchmark weighted tau (max-min) -- is the only selection rule whose LOBO result meets the
acceptance of issue 13 on both metrics: LOBO mean weighted tau 0.597 (every single estimator
<= 0.528, LogME), worst benchmark 0.538 (text_tasks; LogME 0.393 there), mean regret@1 0.027
(best single: GBC 0.033), worst regret@1 0.080 (regression; LogME 0.251 there). Rule ``mean``
(0.611 / 0.497) fails the regret checks (mean 0.033 > GBC's 0.0325; image_zoo2 0.105 > LogME's
0.102). The default is the design rule ``worst`` chooses on all five benchmarks; equal weights.
Where it loses: on text_models it is below LogME alone held out (0.692 vs 0.718 weighted tau,
regret@1 0 for both).

``kind="models"`` -- each candidate is a different model, its features are that model's
embeddings of the target: ``logme`` (Bayesian evidence of a linear model), ``gbc`` (Gaussian
Bhattacharyya class overlap), ``hscore_shrinkage`` (regularised H-score) and ``tmi`` (class-
conditional k-NN entropy). N-LEEP and LEEP are no longer default members: no LOBO rule chose
them on the z-mean designs (they remain available by name; LEEP needs source probabilities).

``kind="tasks"`` -- each candidate is a source task and its features are the *same* base-encoder
embeddings of the target mapped through that source's ESM (a linear map): ``logme``,
``etran_lda`` (ETran's LDA energy) and ``hscore_shrinkage``. This is rule ``worst``'s choice
made *without* text_tasks (the only tasks benchmark): ``logme+etran_lda+hscore_shrinkage+tmi``,
less TMI, which gives one value to every source on ESM-mapped features (weighted tau 0.000 on
text_tasks: it adds nothing there); held out on text_tasks: weighted tau 0.538, regret@1 0.0006.
It is also the set the catalogue-scale statistics path computes (``estimators.esm_stats``).
The models design (with GBC) is not used for tasks: there is no ``esm_gbc`` / ``esm_tmi``; an
``esm_gbc`` from statistics would need per-source per-class means of the mapped features
(W mu_c + b) and the diagonals of W S_c W^T (S_c the per-class base covariance), which the
per-class base statistics of the target determine.

Both kinds:
  * ``static`` (log10(parameter count) + log10(1 + source-set size), the target-agnostic
    baseline of Singh et al., ICLR 2026) is computed and returned when candidates carry
    ``meta``, with weight 0 by default: on the model zoo it lowered the combination's
    regret@1 (it ranks a big random-init model high); pass ``weights={"static": w}`` to use it.
  * ``prior``: a per-source value from observed fine-tuning results (``observed_prior``), weight
    1, when the caller passes one.
Each estimator's scores are z-scored across the candidates (clipped to [-3, 3] so a single
outlying candidate cannot dominate) before averaging. An estimator that fails is skipped, so
the default degrades to the remaining ones (e.g. TMI, which needs 4 examples per class, on a
few-shot target). N-LEEP, when requested, first retries with one mixture component per class,
then with diagonal covariances: ``FALLBACK_PARAMS``, see ``ScoreTable.score_column``.

``observed_prior`` turns observed results on *other* targets into a per-source prior, weighted by
target-target similarity (TaskShop / AutoTransfer style); ``profile_similarity`` computes such
similarities from observed-result profiles over shared sources.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import info as _info
from . import names as _names
from . import score as _score

__all__ = [
    "rank_candidates",
    "ScoreTable",
    "combine",
    "Combined",
    "build_table",
    "Unavailable",
    "RankingFailed",
    "fallbacks_for",
    "default_weights",
    "zscores",
    "NOISE_RTOL",
    "DEFAULT_ESTIMATORS",
    "KINDS",
    "observed_prior",
    "profile_similarity",
    "static_score",
    "DEFAULT_WEIGHTS",
    "FALLBACK_PARAMS",
    "PSEUDO_ESTIMATORS",
]

#: What the candidates' features are: each model's own embeddings, or ESM-mapped base embeddings.
KINDS = ("models", "tasks")
#: The default features estimators per kind, chosen by leave-one-benchmark-out, rule ``worst``
#: (see the module docstring and ``bench/results/lobo.md``); ``static`` is reported with weight 0.
#: The service scores "tasks" with the ``esm_<name>`` variants of these (the same numbers, from
#: the stored ESMs).
DEFAULT_ESTIMATORS: dict[str, tuple[str, ...]] = {
    "models": ("logme", "gbc", "hscore_shrinkage", "tmi"),
    "tasks": ("logme", "etran_lda", "hscore_shrinkage"),
}
#: Weights of the default combination (an estimator absent from the input is left out).
#: Explicitly requested estimators get weight 1.0 unless ``weights`` says otherwise.
DEFAULT_WEIGHTS: dict[str, float] = {"logme": 1.0, "gbc": 1.0, "hscore_shrinkage": 1.0, "tmi": 1.0,
                                     "etran_lda": 1.0, "static": 0.0, "prior": 1.0}
#: Scores that are not in ``estimators.names()`` but can be combined.
PSEUDO_ESTIMATORS = ("static", "prior")


#: Settings tried in turn, for every candidate, when an estimator's defaults fail on some candidate:
#: NLEEP's 5-components-per-class full-covariance mixture needs many examples per class in the PCA
#: space; one component per class needs fewer, diagonal covariances fewer still (few-shot targets
#: with many classes).
FALLBACK_PARAMS = {"nleep": lambda n_classes: [{"n_components": n_classes},
                                               {"n_components": n_classes, "covariance_type": "diag"}]}


def static_score(meta: Mapping[str, Any] | None) -> float | None:
    """Target-agnostic size prior: log10(params) + log10(1 + source_size), each term only when
    given; None when ``meta`` has neither ``params`` nor ``source_size``."""
    if not meta or (meta.get("params") is None and meta.get("source_size") is None):
        return None
    total = 0.0
    if meta.get("params") is not None:
        try:
            params = float(meta["params"])
        except (TypeError, ValueError):
            params = math.nan
        if not math.isfinite(params) or params <= 0:
            raise ValueError(f"meta['params'] must be a positive number, got {meta['params']!r}")
        total += math.log10(params)
    if meta.get("source_size") is not None:
        try:
            size = float(meta["source_size"])
        except (TypeError, ValueError):
            size = math.nan
        if not math.isfinite(size) or size < 0:
            raise ValueError(f"meta['source_size'] must be a non-negative number, got {meta['source_size']!r}")
        total += math.log10(1.0 + size)
    return total


# ---------------------------------------------------------------------- the score table
class Unavailable(Exception):
    """Raised by a cell scorer when a candidate lacks the input an estimator needs (no source
    probabilities, no ESM yet, no features): the cell is *unavailable*, not an estimator failure."""


class RankingFailed(ValueError):
    """No estimator produced a value for any candidate: there is nothing to rank by."""


#: A column whose spread (standard deviation across the candidates) is at most this fraction of
#: its largest magnitude is floating-point noise, not a difference between candidates: it
#: contributes z = 0 to every candidate. The estimators are stable to about 1e-12 relative
#: (float64 sums over n examples, eigen-decompositions with a relative cut-off; see
#: ``estimators.hscore``), so 1e-9 leaves three orders of margin over the noise and is still far
#: below any difference that could mean something for transfer.
NOISE_RTOL = 1e-9
#: Z-scores are clipped to [-Z_CLIP, Z_CLIP], so a single outlying candidate cannot dominate.
Z_CLIP = 3.0


def zscores(values: np.ndarray) -> np.ndarray:
    """Direction-corrected values -> z-scores across candidates, clipped to [-3, 3].

    All zeros when the spread is within floating-point noise: std <= ``NOISE_RTOL`` * max |v|
    (this also covers a constant column and a column of zeros)."""
    values = np.asarray(values, dtype=np.float64)
    sd = float(values.std())
    if not np.isfinite(sd) or sd <= NOISE_RTOL * float(np.abs(values).max(initial=0.0)) or sd == 0.0:
        return np.zeros_like(values)
    z: np.ndarray = np.clip((values - values.mean()) / sd, -Z_CLIP, Z_CLIP)
    return z


CellFn = Callable[[str, dict[str, Any]], float]


class ScoreTable:
    """Candidates x estimators: raw values (NaN where missing) with per-cell notes.

    Rows are the candidate names, sorted (so the arithmetic of ``combine`` never depends on the
    order the caller listed them in); columns are estimators (or ``static`` / ``prior``) in the
    order they were added. Per cell, ``errors`` holds why an estimator raised, ``unavailable`` why
    a candidate has no input for it, ``notes`` which fallback settings produced its value.
    Fill it with ``set`` / ``fail`` / ``mark_unavailable`` or, for an estimator, ``score_column``
    (which applies the fallback policy); rank it with ``combine``.
    """

    def __init__(self, candidates: Sequence[str]):
        names_ = [str(c) for c in candidates]
        if not names_ or len(set(names_)) != len(names_):
            raise ValueError("a score table needs one or more distinct candidate names")
        self.candidates: tuple[str, ...] = tuple(sorted(names_))
        self._row = {c: i for i, c in enumerate(self.candidates)}
        self.columns: list[str] = []
        self._values: dict[str, np.ndarray] = {}
        self.higher_is_better: dict[str, bool] = {}
        self.errors: dict[str, dict[str, str]] = {}
        self.unavailable: dict[str, dict[str, str]] = {}
        self.notes: dict[str, dict[str, str]] = {}
        self.params: dict[str, dict[str, Any]] = {}  # column -> the estimator settings its values used

    # -- filling
    def add_column(self, column: str, *, higher_is_better: bool = True) -> None:
        if column in self._values:
            raise ValueError(f"column {column!r} is already in the table")
        self.columns.append(column)
        self._values[column] = np.full(len(self.candidates), np.nan)
        self.higher_is_better[column] = bool(higher_is_better)
        self.errors[column], self.unavailable[column], self.notes[column] = {}, {}, {}

    def set(self, column: str, candidate: str, value: float, note: str | None = None) -> None:
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"{column} on {candidate!r}: non-finite value {v}")
        self._values[column][self._row[candidate]] = v
        if note is not None:
            self.notes[column][candidate] = note

    def fail(self, column: str, candidate: str, reason: str) -> None:
        self._values[column][self._row[candidate]] = np.nan
        self.errors[column][candidate] = reason

    def mark_unavailable(self, column: str, candidate: str, reason: str) -> None:
        self._values[column][self._row[candidate]] = np.nan
        self.unavailable[column][candidate] = reason

    def score_column(self, column: str, cell: CellFn, *, higher_is_better: bool = True,
                     params: Mapping[str, Any] | None = None, fallbacks: Sequence[Mapping[str, Any]] = (),
                     after_cell: Callable[[], None] | None = None) -> None:
        """Fill ``column`` with ``cell(candidate, kwargs)`` for every candidate (the fallback policy).

        ``kwargs`` are ``params`` first. When ``cell`` raises (anything but ``Unavailable``) for
        some candidate, each of ``fallbacks`` (see ``fallbacks_for``) is tried in turn for *every*
        candidate, and the first that scores them all is used, with a note on each cell; when none
        does, the failing cell records the reasons (and ``combine`` drops the column). ``Unavailable``
        marks that candidate's cell and never triggers a fallback. ``after_cell`` runs after each
        call, outside the error handling (progress reporting)."""
        self.add_column(column, higher_is_better=higher_is_better)
        reason, last_failed = "", self.candidates[0]
        attempts = [dict(params or {})] + [dict(params or {}, **kw) for kw in fallbacks]
        for attempt, kw in enumerate(attempts):
            values: dict[str, float] = {}
            missing: dict[str, str] = {}
            failed: str | None = None
            for cand in self.candidates:
                try:
                    v = float(cell(cand, dict(kw)))
                    if not math.isfinite(v):
                        raise ValueError(f"non-finite value ({v}) for candidate {cand!r}")
                    values[cand] = v
                except Unavailable as exc:
                    missing[cand] = str(exc)
                except Exception as exc:  # noqa: BLE001 -- any failure of an estimator is recorded
                    failed = cand
                    msg = f"{type(exc).__name__}: {exc}"
                    reason = msg[:500] if attempt == 0 else f"{reason}; retry with {kw}: {msg}"[:800]
                finally:
                    if after_cell is not None:
                        after_cell()
                if failed is not None:
                    break
            if failed is None:
                self.params[column] = dict(kw)
                note = None if attempt == 0 else \
                    f"default settings failed ({reason[:200]}); used {attempts[attempt]} for every candidate"
                for cand, v in values.items():
                    self.set(column, cand, v, note)
                for cand, why in missing.items():
                    self.mark_unavailable(column, cand, why)
                return
            last_failed = failed
        self.fail(column, last_failed, reason)

    # -- reading
    def value(self, column: str, candidate: str) -> float | None:
        v = float(self._values[column][self._row[candidate]])
        return v if math.isfinite(v) else None

    def column(self, column: str) -> np.ndarray:
        """Raw values of one column (a copy; NaN where missing)."""
        return self._values[column].copy()

    @property
    def values(self) -> np.ndarray:
        """(n_candidates, n_columns) raw values, NaN where missing."""
        if not self.columns:
            return np.empty((len(self.candidates), 0))
        return np.stack([self._values[c] for c in self.columns], axis=1)

    def raw(self, candidate: str) -> dict[str, float]:
        """``{column: value}`` of the cells of ``candidate`` that hold a value."""
        return {c: v for c in self.columns if (v := self.value(c, candidate)) is not None}


def fallbacks_for(estimator: str, n_classes: int, user_params: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The settings tried, in turn, when ``estimator``'s defaults fail on some candidate
    (``FALLBACK_PARAMS``); none when the caller set the estimator's parameters (no silent change)."""
    if user_params or estimator not in FALLBACK_PARAMS:
        return []
    return FALLBACK_PARAMS[estimator](int(n_classes))


@dataclass
class Combined:
    """What ``combine`` returns: candidates best first, with what was used and what was not.

    order: ``[(name, score or None, {column: z-score})]`` best first (unscored candidates last).
    skipped: ``{column: reason}`` for the columns dropped for every candidate.
    weights: ``{column: weight}`` of the columns combined.
    unscored: ``{name: reason}`` for candidates that got no combined score.
    notes: ``{column: note}`` (fallback settings used), plus ``"combine"`` when the zero-weight
    columns were used because nothing else remained.
    """

    order: list[tuple[str, float | None, dict[str, float]]]
    skipped: dict[str, str]
    weights: dict[str, float]
    unscored: dict[str, str]
    notes: dict[str, str]
    prior: dict[str, float]


def combine(table: ScoreTable, weights: Mapping[str, float] | None = None,
            prior: Mapping[str, float | None] | None = None) -> Combined:
    """Rank the candidates of ``table``: the one place the failure and fallback policy lives.

    1. A column (estimator) that *failed* on any candidate -- it raised even with the fallback
       settings (``ScoreTable.score_column``), or a value is marked as an error -- is dropped for
       every candidate, and the reason goes to ``skipped``: an estimator is either compared
       across all candidates or not at all. A column with no value for any candidate is dropped
       the same way.
    2. ``prior`` (``{candidate: value}``, higher is better) becomes the ``prior`` column;
       candidates without a finite value get the mean of the others (no advantage, no penalty).
    3. Weights: ``weights[column]``, 1.0 for a column it does not name. When every remaining
       column weighs 0 (e.g. only the ``static`` or ``semb`` baselines are left), they are used
       with weight 1 each, and ``notes["combine"]`` says so.
    4. A candidate *unavailable* in a column of positive weight (it lacks the input: no source
       probabilities, no ESM yet) gets no combined score; it is placed after every scored
       candidate, ordered by the mean z-score of the zero-weight columns it has values for
       (z across all candidates with a value), then by name; ``unscored`` says why.
    5. Every other candidate: each column is direction-corrected (negated when lower is better)
       and z-scored across the scored candidates (``zscores``: clipped to [-3, 3]; a column whose
       spread is within floating-point noise, std <= ``NOISE_RTOL`` * max |value|, gives 0);
       ``score = sum_e w_e z_e / sum_e w_e``. Ties are broken by name.
    6. No column left -> ``RankingFailed`` (a ``ValueError``) with every reason.
    """
    w_in: dict[str, float] = {}
    for k, v in (weights or {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"weight for {k!r} must be a finite number >= 0, got {v!r}")
        w_in[str(k)] = float(v)
    cands = table.candidates
    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}
    cols: dict[str, np.ndarray] = {}  # direction-corrected raw values of the kept columns
    for c in table.columns:
        vals = table.column(c)
        if table.errors[c]:
            skipped[c] = "; ".join(table.errors[c].values())[:800]
            continue
        if not np.isfinite(vals).any():
            why = sorted(set(table.unavailable[c].values()))
            skipped[c] = ("no candidate has a value" + (f" ({'; '.join(why)[:400]})" if why else ""))
            continue
        cols[c] = vals if table.higher_is_better[c] else -vals
        if table.notes[c]:
            notes[c] = next(iter(table.notes[c].values()))
    prior_raw: dict[str, float] = {}
    if prior is not None:
        if not isinstance(prior, Mapping):
            raise ValueError("prior must be a dict {candidate name: value}")
        pv = np.array([float(pval) if (pval := prior.get(n)) is not None else np.nan for n in cands])
        finite = np.isfinite(pv)
        if finite.any():
            pv[~finite] = pv[finite].mean()
            cols["prior"] = pv
            prior_raw = {n: float(pv[i]) for i, n in enumerate(cands) if finite[i]}
        else:
            skipped["prior"] = "no candidate has a finite prior value"
    if not cols:
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no estimator was requested"
        raise RankingFailed(f"no estimator could score the candidates ({reasons})")
    w = {c: w_in.get(c, 1.0) for c in cols}
    if all(v == 0 for v in w.values()):
        w = {c: 1.0 for c in cols}
        notes["combine"] = (f"every remaining column weighs 0; ranked by {', '.join(cols)} "
                            "with equal weights")
    weighted = [c for c in cols if w[c] > 0]
    complete = np.all(np.isfinite(np.stack([cols[c] for c in weighted], axis=1)), axis=1)
    unscored: dict[str, str] = {}
    for i, n in enumerate(cands):
        if not complete[i]:
            lack = [c for c in weighted if not np.isfinite(cols[c][i])]
            unscored[n] = "; ".join(table.unavailable.get(c, {}).get(n, f"no {c} value") for c in lack)
    if not complete.any():
        raise RankingFailed("no candidate has a value for every weighted estimator ("
                            + "; ".join(f"{n}: {why}" for n, why in unscored.items())[:800] + ")")
    wsum = sum(w[c] for c in weighted)
    z: dict[str, np.ndarray] = {}
    score = np.zeros(int(complete.sum()))
    for c in weighted:
        z[c] = zscores(cols[c][complete])
        score = score + w[c] * z[c]
    score = score / wsum
    idx = np.flatnonzero(complete)
    scored = [(cands[i], float(score[k]), {c: float(z[c][k]) for c in weighted}) for k, i in enumerate(idx)]
    scored.sort(key=lambda r: (-r[1], r[0]))
    rest: list[tuple[str, float | None, dict[str, float]]] = []
    if unscored:
        zero = [c for c in cols if w[c] == 0]
        zall = {}
        for c in zero:
            have = np.isfinite(cols[c])
            zc = np.full(len(cands), np.nan)
            zc[have] = zscores(cols[c][have])
            zall[c] = zc
        keyed = []
        for i, n in enumerate(cands):
            if complete[i]:
                continue
            mine = {c: float(zall[c][i]) for c in zero if np.isfinite(zall[c][i])}
            keyed.append((0 if mine else 1, -float(np.mean(list(mine.values()))) if mine else 0.0, n, mine))
        keyed.sort()
        rest = [(n, None, mine) for _, _, n, mine in keyed]
    return Combined(order=[*scored, *rest], skipped=skipped, weights={c: w[c] for c in cols},
                    unscored=unscored, notes=notes, prior=prior_raw)


# ---------------------------------------------------------------------- the library's ranker
def _validate(candidates: Mapping[str, Mapping[str, Any]], y: Any) -> tuple[dict[str, dict[str, Any]], np.ndarray]:
    if not isinstance(candidates, Mapping) or not candidates:
        raise ValueError("candidates must be a non-empty dict {name: {'features': (n, d) array, ...}}")
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] < 2:
        raise ValueError(f"y must be a 1-D array of at least 2 labels, got shape {y.shape}")
    n = y.shape[0]
    out: dict[str, dict[str, Any]] = {}
    for name, cand in candidates.items():
        if not isinstance(cand, Mapping):
            raise ValueError(f"candidate {name!r} must be a dict with 'features' (and optional 'probs', 'meta')")
        unknown = set(cand) - {"features", "probs", "meta", "scores"}
        if unknown:
            raise ValueError(f"candidate {name!r} has unknown key(s) {sorted(unknown)}; "
                             "allowed: features, probs, meta, scores")
        c = dict(cand)
        for key in ("features", "probs"):
            if c.get(key) is None:
                continue
            a = np.asarray(c[key])
            if a.ndim != 2 or a.shape[0] != n:
                raise ValueError(f"candidate {name!r}: {key} must have shape (n={n}, k), got {a.shape}")
            c[key] = a
        if c.get("features") is None and not c.get("scores") and c.get("meta") is None:
            raise ValueError(f"candidate {name!r} has no 'features' (nor 'scores' / 'meta' to rank it by)")
        meta = c.get("meta")
        if meta is not None and not isinstance(meta, Mapping):
            raise ValueError(f"candidate {name!r}: meta must be a dict such as {{'params': 1000000}}")
        scores = c.get("scores")
        if scores is not None and not isinstance(scores, Mapping):
            raise ValueError(f"candidate {name!r}: scores must be a dict {{estimator: value}}")
        out[str(name)] = c
    if len(out) != len(candidates):
        raise ValueError("candidate names must be distinct as strings")
    return out, y


def _default_estimators(cands: Mapping[str, Mapping[str, Any]], kind: str) -> list[str]:
    def available(e: str, needs: str) -> bool:
        return all(c.get(needs) is not None or (c.get("scores") or {}).get(e) is not None for c in cands.values())

    chosen = [e for e in DEFAULT_ESTIMATORS[kind] if available(e, "features")]
    if all(static_score(c.get("meta")) is not None for c in cands.values()):
        chosen.append("static")
    return chosen


def _check_request(cands: Mapping[str, Any], estimators: Sequence[str] | None, kind: str,
                   params: Mapping[str, Any]) -> list[str]:
    known = set(_names()) | set(PSEUDO_ESTIMATORS)
    for key, val in params.items():
        if key not in known:
            raise ValueError(f"unknown keyword {key!r}: extra keywords must be estimator names "
                             f"with a dict of that estimator's parameters")
        if not isinstance(val, Mapping):
            raise ValueError(f"parameters for {key!r} must be a dict, got {type(val).__name__}")
    if estimators is None:
        return _default_estimators(cands, kind)
    if isinstance(estimators, str):
        raise ValueError("estimators must be a list of names, e.g. ['logme', 'leep']")
    ests = list(dict.fromkeys(estimators))
    for e in ests:
        if e == "prior":
            raise ValueError("pass observed results with prior=..., not as an estimator name")
        if e != "static":
            needs = _info(e).needs  # ValueError for an unknown name
            if needs not in ("features", "probs"):
                raise ValueError(f"estimator {e!r} needs {needs!r} inputs; rank_candidates scores "
                                 "candidates' features or probabilities (features/probs estimators)")
    return ests


def build_table(candidates: Mapping[str, Mapping[str, Any]], y: Any, estimators: Sequence[str],
                params: Mapping[str, Mapping[str, Any]] | None = None) -> ScoreTable:
    """Score every (validated) candidate with every estimator into a ``ScoreTable``.

    A candidate's precomputed ``scores[e]`` is used for the default settings; ``static`` comes
    from ``meta``; a candidate without the input an estimator needs is ``Unavailable``."""
    params = params or {}
    y = np.asarray(y)
    n_classes = int(np.unique(y).shape[0])
    table = ScoreTable(list(candidates))
    for e in estimators:
        user = dict(params.get(e, {}))

        def cell(name: str, kw: dict[str, Any], e: str = e, user: dict[str, Any] = user) -> float:
            c = candidates[name]
            pre = (c.get("scores") or {}).get(e)
            if pre is not None and kw == user:
                return float(pre)
            if e == "static":
                v = static_score(c.get("meta"))
                if v is None:
                    raise Unavailable(f"{name} has no meta['params'] / meta['source_size']")
                return v
            needs = _info(e).needs
            X = c.get(needs)
            if X is None:
                raise Unavailable(f"{name} has no {needs}")
            return _score(e, X, y, **kw)

        hib = True if e == "static" else _info(e).higher_is_better
        table.score_column(e, cell, higher_is_better=hib, params=user,
                           fallbacks=fallbacks_for(e, n_classes, params.get(e)))
    return table


def default_weights(estimators_given: bool, weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Column weights: ``DEFAULT_WEIGHTS`` for a default request, only the prior's for explicit
    estimators (the others weigh 1), updated with the caller's ``weights``."""
    w = dict(DEFAULT_WEIGHTS) if not estimators_given else {"prior": DEFAULT_WEIGHTS["prior"]}
    for k, v in (weights or {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"weight for {k!r} must be a finite number >= 0, got {v!r}")
        w[str(k)] = float(v)
    return w


def ranking_rows(table: ScoreTable, result: Combined) -> list[dict[str, Any]]:
    """``combine``'s result in ``rank_candidates``' format (one dict per candidate, best first)."""
    out: list[dict[str, Any]] = []
    for name, score, _z in result.order:
        raw = table.raw(name)
        raw = {c: v for c, v in raw.items() if c not in result.skipped}
        if name in result.prior:
            raw["prior"] = result.prior[name]
        r: dict[str, Any] = {"name": name, "score": score, "scores": raw, "skipped": dict(result.skipped)}
        notes = {c: v for c, v in result.notes.items()}
        if notes:
            r["notes"] = notes
        if name in result.unscored:
            r["unscored"] = result.unscored[name]
        out.append(r)
    return out


def rank_candidates(
    candidates: Mapping[str, Mapping[str, Any]],
    y: Any,
    *,
    estimators: Sequence[str] | None = None,
    prior: Mapping[str, float] | None = None,
    weights: Mapping[str, float] | None = None,
    kind: str = "models",
    bootstrap: int = 100,
    seed: int = 0,
    **params: Any,
) -> list[dict[str, Any]]:
    """Rank candidate sources for one target, best first: ``build_table`` + ``combine``.

    candidates: ``{name: {"features": (n, d), "probs": optional (n, Z), "meta": optional
        {"params": int, "source_size": int}, "scores": optional {estimator: precomputed value}}}``,
        all on the same n target examples with labels ``y``.
    estimators: names from ``estimators.names()`` that need ``features`` or ``probs``, plus
        ``"static"``; default: ``DEFAULT_ESTIMATORS[kind]`` (models: ``logme``, ``gbc``,
        ``hscore_shrinkage``, ``tmi``; tasks: ``logme``, ``etran_lda``, ``hscore_shrinkage``),
        + ``static`` with weight 0 when all have ``meta`` with ``params`` or ``source_size``.
    prior: ``{name: value}`` from observed results (e.g. ``observed_prior``); higher is better;
        candidates without a value get the prior's mean. Combined with weight ``weights['prior']``.
    weights: per-estimator weights; defaults: ``DEFAULT_WEIGHTS`` for the default estimators,
        1.0 for explicitly requested ones.
    kind: ``"models"`` (default: each candidate's features are its own model's embeddings of the
        target) or ``"tasks"`` (each candidate's features are the target's base-encoder embeddings
        mapped through the source's ESM); selects the default estimators.
    bootstrap: resamples of the target's examples for the uncertainty of the ranking
        (``estimators.uncertainty``; 0 = none); ``seed`` seeds them. Each candidate then carries
        ``"interval"`` ([low, high] of its combined score, 95%), ``"p_top"`` (share of resamples
        where it ranks first) and ``"tied_with_top"`` (statistically indistinguishable from the
        top), and every row ``"warnings"`` (target too small, nothing separable).
    params: per-estimator keyword arguments, ``{estimator_name: {kwarg: value}}``.

    Returns ``[{"name", "score", "scores": {estimator: raw value}, "skipped": {estimator: reason}}]``
    sorted by the combined score (descending; ties by name). The failure and fallback policy is
    ``combine``'s: an estimator that fails for any candidate is skipped for all (``"skipped"``);
    ``"notes"`` says when an estimator needed fallback settings (``FALLBACK_PARAMS``; NLEEP: one
    mixture component per class, then diagonal covariances) -- used for every candidate; a
    candidate lacking the input of a requested estimator (no ``probs``) gets ``"score": None``,
    ``"unscored"`` with the reason, and comes last. Raises ``ValueError`` for invalid input, and
    ``RankingFailed`` (a ``ValueError``) when no estimator could score the candidates.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    cands, y = _validate(candidates, y)
    ests = _check_request(cands, estimators, kind, params)
    w_all = default_weights(estimators is not None, weights)
    if prior is not None and not isinstance(prior, Mapping):
        raise ValueError("prior must be a dict {candidate name: value}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise ValueError(f"bootstrap must be an integer >= 0 (resamples), got {bootstrap!r}")
    table = build_table(cands, y, ests, params)
    result = combine(table, w_all, prior)
    rows = ranking_rows(table, result)
    if bootstrap:
        from .uncertainty import bootstrap as _bootstrap
        from .uncertainty import features_values

        used = {c: table.params.get(c, {}) for c in table.columns}
        boot = _bootstrap(table, result, y, features_values(cands, y, used), weights=w_all, prior=prior,
                          B=bootstrap, seed=seed)
        for r in rows:
            r.update(boot.for_candidate(r["name"]))
            r["warnings"] = list(boot.warnings)
    return rows


def observed_prior(
    observed: Mapping[str, Mapping[str, float]],
    similarity: Mapping[str, float],
    *,
    normalize: str = "zscore",
) -> dict[str, float]:
    """Similarity-weighted mean of observed results on other targets, per source.

    observed: ``{target: {source: value}}`` (higher is better), e.g. fine-tuning accuracies.
    similarity: ``{target: weight}``; negative weights count as 0 and targets missing from it are
        ignored. When every weight is 0 the plain mean over targets is used (the "static" prior).
    normalize: ``"zscore"`` (default) standardises each target's values over its observed sources
        first, so targets with different metrics / difficulty weigh alike (a target with a
        single observation then contributes 0); ``"none"`` averages raw values (use when values
        are already comparable, e.g. gains over a target-only baseline).

    prior(s) = sum_t w_t v_t(s) / sum_t w_t over the targets t that observed s. Returns
    ``{source: prior}`` for every source observed on at least one target.
    """
    if normalize not in ("zscore", "none"):
        raise ValueError(f"normalize must be 'zscore' or 'none', got {normalize!r}")
    if not isinstance(observed, Mapping) or not isinstance(similarity, Mapping):
        raise ValueError("observed must be {target: {source: value}} and similarity {target: weight}")
    targets = [t for t in observed if observed[t]]
    sources = sorted({s for t in targets for s in observed[t]})
    if not sources:
        return {}
    col = {s: j for j, s in enumerate(sources)}
    V = np.full((len(targets), len(sources)), np.nan)
    for i, t in enumerate(targets):
        for s, v in observed[t].items():
            v = float(v)
            if not math.isfinite(v):
                raise ValueError(f"observed[{t!r}][{s!r}] is not a finite number")
            V[i, col[s]] = v
    if normalize == "zscore":
        mu = np.nanmean(V, axis=1, keepdims=True)
        sd = np.nanstd(V, axis=1, keepdims=True)
        V = np.where(sd > 0, (V - mu) / np.where(sd > 0, sd, 1.0), 0.0 * V)
    w = np.array([max(float(similarity.get(t, 0.0) or 0.0), 0.0) for t in targets])
    if not np.all(np.isfinite(w)):
        raise ValueError("similarity values must be finite numbers")
    mask = np.isfinite(V)
    if w.sum() <= 0:
        w = np.ones(len(targets))
    W = w[:, None] * mask
    num = np.where(mask, V, 0.0) * W
    den = W.sum(axis=0)
    # a source seen only on zero-weight targets falls back to its plain mean
    plain = np.nanmean(np.where(mask, V, np.nan), axis=0)
    prior = np.where(den > 0, num.sum(axis=0) / np.where(den > 0, den, 1.0), plain)
    return {s: float(prior[j]) for s, j in col.items()}


def profile_similarity(
    profiles: Mapping[str, Mapping[str, float]],
    query: Mapping[str, float],
    *,
    bandwidth: float | None = None,
    min_shared: int = 3,
) -> dict[str, float]:
    """Similarity of a query target to each known target from observed-result profiles.

    profiles: ``{target: {source: value}}``; query: ``{source: value}`` (the query target's own
    observed results, e.g. a few probe fine-tunings). On the sources both observed:
      * >= ``min_shared`` shared: Pearson correlation of the two profiles, clipped at 0
        (how alike the two targets *order* the sources);
      * fewer (1-2 probes): Gaussian kernel exp(-mean (q_s - v_s)^2 / (2 h^2)), h = ``bandwidth``
        (default: the standard deviation of all profile values), i.e. closeness in level;
      * none shared: 0.
    """
    if bandwidth is not None and not (bandwidth > 0):
        raise ValueError("bandwidth must be > 0")
    if bandwidth is None:
        allv = np.array([float(v) for p in profiles.values() for v in p.values()])
        bandwidth = float(allv.std()) if allv.size > 1 and allv.std() > 0 else 1.0
    sims = {}
    for t, prof in profiles.items():
        shared = sorted(set(prof) & set(query))
        if not shared:
            sims[t] = 0.0
            continue
        a = np.array([float(query[s]) for s in shared])
        b = np.array([float(prof[s]) for s in shared])
        if len(shared) >= min_shared:
            if a.std() <= 0 or b.std() <= 0:
                sims[t] = 0.0
            else:
                sims[t] = max(float(np.corrcoef(a, b)[0, 1]), 0.0)
        else:
            sims[t] = float(np.exp(-np.mean((a - b) ** 2) / (2 * bandwidth**2)))
    return sims


# ------------------------------------------------------------------ target types
#: Target types a dataset can have (``classification``: int labels; ``regression``: float
#: targets (n,) or (n, k); ``multilabel``: an (n, L) 0/1 matrix).
TARGET_TYPES = ("classification", "regression", "multilabel")
#: The default estimators per target type and kind. Regression and multi-label targets are ranked
#: by LogME in its regression form (Bayesian evidence of a linear model per target column; a
#: multi-label target is the 0/1 matrix, one column per label), the only default estimator defined
#: for float targets; class-label estimators (N-LEEP, ETran-LDA, H-score, LEEP, ...) do not apply.
DEFAULT_ESTIMATORS_BY_TARGET: dict[str, dict[str, tuple[str, ...]]] = {
    "classification": DEFAULT_ESTIMATORS,
    "regression": {"models": ("logme",), "tasks": ("logme",)},
    "multilabel": {"models": ("logme",), "tasks": ("logme",)},
}


def not_applicable(name: str, target_type: str) -> str | None:
    """Why estimator ``name`` cannot score a target of ``target_type`` (None when it can).

    Estimators that compare two domains need no labels and apply to every target type; the
    others need class labels unless their registry entry says ``regression=True`` (LogME and the
    ESM-LogME built on it, which take float targets with ``regression=True``)."""
    if target_type not in TARGET_TYPES:
        raise ValueError(f"target_type must be one of {', '.join(TARGET_TYPES)}, got {target_type!r}")
    if target_type == "classification":
        return None
    info = _info(name)
    if info.needs == "domains" or info.regression or name == "esm_logme":
        return None
    return (f"{name} needs class labels; this target is {target_type} (estimators for float targets: "
            f"logme, esm_logme, and the label-free domain measures)")
