"""The default ranker: combine several transferability estimators (and observed results) into one order.

``rank_candidates`` (contract in shared/DESIGN.md) scores every candidate source with a small set of
complementary estimators, puts each estimator's scores on a common scale across the candidates
(direction-corrected z-scores), and averages them with weights:

    combined(c) = sum_e w_e * z_e(c) / sum_e w_e,   z_e(c) = (s_e(c) - mean_c s_e) / std_c s_e

An estimator that raises (singular covariances, too few examples per class, missing
probabilities, ...) is skipped for *all* candidates, and the reason is returned with every
candidate under ``"skipped"``; the ranking never depends on one estimator working. Ties are broken
by candidate name, so the output is deterministic.

Default sets (designed from the ``bench/`` results, see ``bench/results/headline.md``), equal
weights, chosen by what the candidates' features are (``kind``):

``kind="models"`` -- each candidate is a different model, its features are that model's
embeddings of the target (and maybe its source-class probabilities):
  * ``logme``: Bayesian evidence of a linear model (the most reliable single estimator on the
    model zoo);
  * ``nleep``: how well unsupervised clusters of the features (a Gaussian mixture) transfer to the
    labels -- a non-linear, cluster-structure view that LogME lacks;
  * ``leep`` when every candidate has source-class probabilities: what the source *head* says
    about the target labels (needs no fitting on features at all).

``kind="tasks"`` -- each candidate is a source task and its features are the *same* base-encoder
embeddings of the target mapped through that source's ESM (a linear map): ``logme``,
``etran_lda`` (ETran's LDA energy) and ``hscore_shrinkage``. N-LEEP is left out on principle: a
full-covariance Gaussian mixture is equivariant to invertible linear maps, so on linear images of
one feature set its posteriors -- hence its score -- differ only through the PCA truncation and
the mixture's initialisation (noise); on the text benchmark adding it lowers the set. The
three were the best set of non-invariant features estimators on the model zoo's ablation (features
only), then checked on the text benchmark (``bench/results/text_tasks.md``: over its 12 targets
level with the best single estimator, ESM-GBC, on weighted tau and lowest on regret@1; on the six
held-out targets behind ESM-GBC).

Both kinds:
  * ``static`` (log10(parameter count) + log10(1 + source-set size), the target-agnostic
    baseline of Singh et al., ICLR 2026) is computed and returned when candidates carry
    ``meta``, with weight 0 by default: on the model zoo it lowered the combination's
    regret@1 (it ranks a big random-init model high); pass ``weights={"static": w}`` to use it.
  * ``prior``: a per-source value from observed fine-tuning results (``observed_prior``), weight
    1, when the caller passes one.
Each estimator's scores are z-scored across the candidates (clipped to [-3, 3] so a single
outlying candidate cannot dominate) before averaging. An estimator that fails is skipped, so
the default degrades to the remaining ones (NLEEP first retries with one mixture component per
class, then with diagonal covariances: ``FALLBACK_PARAMS``).

``observed_prior`` turns observed results on *other* targets into a per-source prior, weighted by
target-target similarity (TaskShop / AutoTransfer style); ``profile_similarity`` computes such
similarities from observed-result profiles over shared sources.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from . import info as _info
from . import names as _names
from . import score as _score

__all__ = [
    "rank_candidates",
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
#: The default features estimators per kind (``leep`` joins "models" when every candidate has
#: source probabilities; ``static`` is reported with weight 0). The service scores "tasks" with
#: the ``esm_<name>`` variants of these (the same numbers, from the stored ESMs).
DEFAULT_ESTIMATORS: dict[str, tuple[str, ...]] = {
    "models": ("logme", "nleep"),
    "tasks": ("logme", "etran_lda", "hscore_shrinkage"),
}
#: Weights of the default combination (an estimator absent from the input is left out).
#: Explicitly requested estimators get weight 1.0 unless ``weights`` says otherwise.
DEFAULT_WEIGHTS: dict[str, float] = {"logme": 1.0, "nleep": 1.0, "leep": 1.0, "etran_lda": 1.0,
                                     "hscore_shrinkage": 1.0, "static": 0.0, "prior": 1.0}
#: Scores that are not in ``estimators.names()`` but can be combined.
PSEUDO_ESTIMATORS = ("static", "prior")


#: Settings tried in turn, for every candidate, when an estimator's defaults fail on some candidate:
#: NLEEP's 5-components-per-class full-covariance mixture needs many examples per class in the PCA
#: space; one component per class needs fewer, diagonal covariances fewer still (few-shot targets
#: with many classes).
FALLBACK_PARAMS = {"nleep": lambda n_classes: [{"n_components": n_classes},
                                               {"n_components": n_classes, "covariance_type": "diag"}]}


def static_score(meta: Mapping | None) -> float | None:
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


def _validate(candidates, y):
    if not isinstance(candidates, Mapping) or not candidates:
        raise ValueError("candidates must be a non-empty dict {name: {'features': (n, d) array, ...}}")
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] < 2:
        raise ValueError(f"y must be a 1-D array of at least 2 labels, got shape {y.shape}")
    n = y.shape[0]
    out = {}
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


def _default_estimators(cands, kind: str) -> list[str]:
    def available(e: str, needs: str) -> bool:
        return all(c.get(needs) is not None or (c.get("scores") or {}).get(e) is not None for c in cands.values())

    chosen = [e for e in DEFAULT_ESTIMATORS[kind] if available(e, "features")]
    if kind == "models" and available("leep", "probs"):
        chosen.append("leep")
    if all(static_score(c.get("meta")) is not None for c in cands.values()):
        chosen.append("static")
    return chosen


def zscores(values: np.ndarray) -> np.ndarray:
    """Direction-corrected values -> z-scores across candidates (all zeros when constant)."""
    sd = values.std()
    if not np.isfinite(sd) or sd <= 1e-12 * max(1.0, float(np.abs(values).max())):
        return np.zeros_like(values)
    return np.clip((values - values.mean()) / sd, -3.0, 3.0)


def rank_candidates(
    candidates: Mapping[str, Mapping],
    y,
    *,
    estimators: Sequence[str] | None = None,
    prior: Mapping[str, float] | None = None,
    weights: Mapping[str, float] | None = None,
    kind: str = "models",
    **params,
) -> list[dict]:
    """Rank candidate sources for one target, best first.

    candidates: ``{name: {"features": (n, d), "probs": optional (n, Z), "meta": optional
        {"params": int, "source_size": int}, "scores": optional {estimator: precomputed value}}}``,
        all on the same n target examples with labels ``y``.
    estimators: names from ``estimators.names()`` that need ``features`` or ``probs``, plus
        ``"static"``; default: ``DEFAULT_ESTIMATORS[kind]`` (models: ``logme`` and ``nleep``, +
        ``leep`` when all candidates have probs; tasks: ``logme``, ``etran_lda``,
        ``hscore_shrinkage``), + ``static`` with weight 0 when all have ``meta`` with ``params``
        or ``source_size``.
    prior: ``{name: value}`` from observed results (e.g. ``observed_prior``); higher is better;
        candidates without a value get the prior's mean. Combined with weight ``weights['prior']``.
    weights: per-estimator weights; defaults: ``DEFAULT_WEIGHTS`` for the default estimators,
        1.0 for explicitly requested ones.
    kind: ``"models"`` (default: each candidate's features are its own model's embeddings of the
        target) or ``"tasks"`` (each candidate's features are the target's base-encoder embeddings
        mapped through the source's ESM); selects the default estimators.
    params: per-estimator keyword arguments, ``{estimator_name: {kwarg: value}}``.

    Returns ``[{"name", "score", "scores": {estimator: raw value}, "skipped": {estimator: reason}}]``
    sorted by the combined score (descending; ties by name); ``"notes"`` is added when an
    estimator needed fallback settings (``FALLBACK_PARAMS``; NLEEP: one mixture component per class,
    then diagonal covariances). Raises ``ValueError`` for invalid input, or when no estimator could
    score the candidates and there is no prior.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    cands, y = _validate(candidates, y)
    known = set(_names()) | set(PSEUDO_ESTIMATORS)
    for key, val in params.items():
        if key not in known:
            raise ValueError(f"unknown keyword {key!r}: extra keywords must be estimator names "
                             f"with a dict of that estimator's parameters")
        if not isinstance(val, Mapping):
            raise ValueError(f"parameters for {key!r} must be a dict, got {type(val).__name__}")
    if estimators is None:
        ests = _default_estimators(cands, kind)
    else:
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
    w_all = dict(DEFAULT_WEIGHTS) if estimators is None else {"prior": DEFAULT_WEIGHTS["prior"]}
    if weights is not None:
        for k, v in weights.items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"weight for {k!r} must be a finite number >= 0, got {v!r}")
        w_all.update({str(k): float(v) for k, v in weights.items()})
    if prior is not None and not isinstance(prior, Mapping):
        raise ValueError("prior must be a dict {candidate name: value}")

    names_ = sorted(cands)
    raw: dict[str, dict[str, float]] = {n: {} for n in names_}
    skipped: dict[str, str] = {}
    columns: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}
    n_classes = int(np.unique(y).shape[0])

    def column(e: str, kw: dict, use_precomputed: bool) -> np.ndarray:
        vals = np.empty(len(names_))
        for i, n in enumerate(names_):
            c = cands[n]
            pre = (c.get("scores") or {}).get(e) if use_precomputed else None
            if pre is not None:
                v = float(pre)
            elif e == "static":
                v = static_score(c.get("meta"))
                if v is None:
                    raise ValueError(f"candidate {n!r} has no meta['params'] / meta['source_size']")
            else:
                needs = _info(e).needs
                X = c.get(needs)
                if X is None:
                    raise ValueError(f"candidate {n!r} has no {needs}")
                v = _score(e, X, y, **kw)
            if not math.isfinite(v):
                raise ValueError(f"non-finite value for candidate {n!r}")
            vals[i] = v
        return vals

    for e in ests:
        try:
            vals = column(e, dict(params.get(e, {})), True)
        except Exception as exc:  # noqa: BLE001 -- any failure of one estimator skips it, recorded
            reason = f"{type(exc).__name__}: {exc}"[:500]
            vals = None
            for kw in (FALLBACK_PARAMS[e](n_classes) if e in FALLBACK_PARAMS and e not in params else []):
                try:
                    vals = column(e, kw, False)
                    notes[e] = f"default settings failed ({reason[:200]}); used {kw} for every candidate"
                    break
                except Exception as exc2:  # noqa: BLE001
                    reason += f"; retry with {kw}: {type(exc2).__name__}: {exc2}"[:300]
            if vals is None:
                skipped[e] = reason
                continue
        for i, n in enumerate(names_):
            raw[n][e] = float(vals[i])
        hib = True if e == "static" else _info(e).higher_is_better
        columns[e] = zscores(vals if hib else -vals)
    if prior is not None:
        pv = np.array([float(prior[n]) if n in prior and prior[n] is not None else np.nan for n in names_])
        finite = np.isfinite(pv)
        if finite.any():
            pv[~finite] = pv[finite].mean()
            columns["prior"] = zscores(pv)
            for i, n in enumerate(names_):
                if finite[i]:
                    raw[n]["prior"] = float(pv[i])
        else:
            skipped["prior"] = "ValueError: no candidate has a finite prior value"
    if not columns:
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no estimator applies to these inputs"
        raise ValueError(f"no estimator could score the candidates ({reasons})")
    if estimators is None and set(columns) == {"static"} and (weights is None or "static" not in weights):
        w_all["static"] = 1.0  # nothing else to rank by: the size prior alone, at full weight
    wsum = sum(w_all.get(e, 1.0) for e in columns)
    if wsum <= 0:
        raise ValueError(f"all weights of the available estimators ({', '.join(columns)}) are zero")
    combined = sum(w_all.get(e, 1.0) * z for e, z in columns.items()) / wsum
    order = sorted(range(len(names_)), key=lambda i: (-combined[i], names_[i]))
    out = []
    for i in order:
        r = {"name": names_[i], "score": float(combined[i]), "scores": raw[names_[i]], "skipped": dict(skipped)}
        if notes:
            r["notes"] = dict(notes)
        out.append(r)
    return out


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
