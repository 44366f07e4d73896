"""Rankings: which source tasks / pretrained models should a target dataset transfer from?

The default estimators are the library's (``estimators.ranking.DEFAULT_ESTIMATORS``):

``models``: the target is embedded by each candidate encoder (feature cache) and scored with
LogME and N-LEEP (+ LEEP for an NPZ target whose every model carries source probabilities); an
NPZ target ranks the feature arrays it carries (``features``, ``features_<model>``,
``probs_<model>``). N-LEEP falls back to one mixture component per class, then to diagonal
covariances, where its default fails (noted in the score's details).

``tasks``: the target is embedded once with the base encoder; each source task with an ESM is
scored by LogME, ETran-LDA and the shrinkage H-score of the target mapped through that ESM
(``esm_logme``, ``esm_etran_lda``, ``esm_hscore_shrinkage``); ``semb`` (similarity of the two
domains' mean base embeddings) is reported with weight 0 and orders the sources that have no ESM
yet, after the others. ``prefilter_k`` scores only the sources nearest in the FAISS task index.

Every score goes through the SQL cache, so a repeated request computes nothing (``computed``
and ``cached`` counts in the response, ``cached`` per score). The combined ``score`` is the
default ranker's formula (``estimators.ranking``) applied to the cached values: a weighted mean
of per-estimator z-scores across the candidates (lower-is-better estimators negated), plus, for
default requests, the ``static`` size baseline (models; weight 0, reported) and the prior from
observed fine-tuning results (``POST /v1/feedback``; ``estimators.ranking.observed_prior`` over
targets weighted by task-embedding similarity; weight 1). A candidate missing a score is
combined over the estimators it has.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from sqlalchemy import select

import estimators
from estimators.ranking import DEFAULT_ESTIMATORS as LIBRARY_DEFAULTS
from estimators.ranking import DEFAULT_WEIGHTS, FALLBACK_PARAMS, observed_prior, static_score, zscores
from app.core.errors import Invalid, NotFound
from app.core.logging import get_logger
from app.db.models import Dataset, EncoderRow, Feedback, Ranking, SourceTask, iso, utcnow
from app.services import datasets as datasets_svc
from app.services import features as features_svc
from app.services import scores as scores_svc

log = get_logger("rankings")

#: The library's default estimators per kind (``estimators.ranking.DEFAULT_ESTIMATORS``); tasks are
#: scored through each source's stored ESM (``esm_<name>``: the same numbers as ``<name>`` on the
#: ESM-mapped target features). ``semb`` is computed for tasks with weight 0: it orders the sources
#: that have no ESM yet, after those that have one.
DEFAULT_ESTIMATORS = {"models": list(LIBRARY_DEFAULTS["models"]),
                      "tasks": [f"esm_{e}" for e in LIBRARY_DEFAULTS["tasks"]] + ["semb"]}
#: Column weights of a default ranking (explicitly requested estimators all weigh 1).
DEFAULT_COLUMN_WEIGHTS = {**DEFAULT_WEIGHTS, **{f"esm_{e}": DEFAULT_WEIGHTS[e] for e in LIBRARY_DEFAULTS["tasks"]},
                          "semb": 0.0}
NEEDS_FOR = {"models": ("features", "probs"), "tasks": ("esm", "domains")}
SYNC_SCORE_LIMIT = 64  # more uncached scores than this -> run as a job
DOMAIN_MAX_ROWS = 2000  # divergences on at most this many rows per domain (seeded subsample)


@dataclass
class RankingSpec:
    target: str
    candidates: str
    estimators: list[str] | None = None
    top_k: int = 10
    prefilter_k: int | None = None
    sources: list[str] | None = None
    params: dict[str, dict] = field(default_factory=dict)
    use_feedback: bool | None = None

    def as_dict(self) -> dict:
        return {"target": self.target, "candidates": self.candidates, "estimators": self.estimators,
                "top_k": self.top_k, "prefilter_k": self.prefilter_k, "sources": self.sources,
                "params": self.params, "use_feedback": self.use_feedback}


# ---------------------------------------------------------------------- validation
def _validate(ctx, spec: RankingSpec) -> tuple[Dataset, list[str]]:
    if spec.candidates not in NEEDS_FOR:
        raise Invalid(f"candidates must be 'models' or 'tasks', got {spec.candidates!r}")
    ds = datasets_svc.get(ctx, spec.target)
    names = spec.estimators or _defaults_for(ctx, ds, spec)
    if spec.estimators is None and spec.candidates == "models" and ds.kind == "features":
        extras = ds.extra_blobs or {}
        models = [m for m in _model_names(ctx, ds, spec) if m != "features"]
        if models and "features" not in (spec.sources or ["features"]) \
                and all(f"probs_{m}" in extras for m in models):
            names.append("leep")  # as the default ranker: LEEP when every candidate has source probabilities
    if len(set(names)) != len(names):
        raise Invalid("estimators contains duplicates")
    for name in names:
        try:
            info = estimators.info(name)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        if info.needs not in NEEDS_FOR[spec.candidates]:
            other = [n for n in estimators.names() if estimators.info(n).needs in NEEDS_FOR[spec.candidates]]
            raise Invalid(f"estimator {name!r} (needs {info.needs}) cannot rank {spec.candidates}; "
                          f"for {spec.candidates} use one of {', '.join(other)}")
    from estimators.ranking import not_applicable

    reasons = [not_applicable(n, _task_type(ds)) for n in names]
    if all(r is not None for r in reasons):
        raise Invalid(f"none of the estimators {', '.join(names)} applies to this {_task_type(ds)} target: "
                      f"{reasons[0]}")
    unknown_params = set(spec.params or {}) - set(names)
    if unknown_params:
        raise Invalid(f"params given for estimator(s) not requested: {', '.join(sorted(unknown_params))}")
    if spec.top_k < 1:
        raise Invalid("top_k must be >= 1")
    if spec.prefilter_k is not None and spec.prefilter_k < 1:
        raise Invalid("prefilter_k must be >= 1")
    if spec.prefilter_k is not None and spec.candidates != "tasks":
        raise Invalid("prefilter_k applies to candidates='tasks' only")
    if spec.candidates == "tasks" and not _task_rows(ctx, ds, spec):
        raise Invalid("there are no source tasks to rank; register one with POST /v1/sources "
                      "(or start the service with the demo catalogue)")
    if ds.kind == "esm":
        raise Invalid(f"dataset {ds.id} is the placeholder of an imported ESM: it holds no examples to rank")
    if spec.candidates == "tasks" and ds.kind == "image":
        raise Invalid("the source tasks are text tasks embedded by a text base encoder; rank an image dataset "
                      "with candidates='models' (vision models)")
    if spec.candidates == "tasks" and ds.kind == "features":
        base_dim = _base_dim(ctx)
        if (ds.meta or {}).get("dim") != base_dim:
            raise Invalid(f"a tasks ranking of an NPZ dataset needs features from the base encoder "
                          f"{ctx.settings.base_encoder} (dim {base_dim}); this one has dim {(ds.meta or {}).get('dim')}. "
                          "Upload the texts instead, or rank candidates='models'")
    return ds, list(names)


def _task_type(ds: Dataset) -> str:
    return getattr(ds, "task_type", None) or "classification"


def _defaults_for(ctx, ds: Dataset, spec: RankingSpec) -> list[str]:
    """The default estimators for this target type (``estimators.ranking``); for models, LEEP
    joins when every candidate model has a classification head (source-class probabilities)."""
    from estimators.ranking import DEFAULT_ESTIMATORS_BY_TARGET

    t = _task_type(ds)
    if t == "classification":
        names = list(DEFAULT_ESTIMATORS[spec.candidates])
        if spec.candidates == "models" and ds.kind != "features":
            from app.services import models as models_svc

            models = _model_names(ctx, ds, spec)
            if models and all(models_svc.n_probs(ctx, m) > 0 for m in models):
                names.append("leep")
        return names
    base = list(DEFAULT_ESTIMATORS_BY_TARGET[t][spec.candidates])
    return base if spec.candidates == "models" else [f"esm_{e}" for e in base] + ["semb"]


def _base_dim(ctx) -> int | None:
    with ctx.Session() as s:
        row = s.get(EncoderRow, ctx.settings.base_encoder)
    return row.dim if row is not None else None


# ---------------------------------------------------------------------- candidates
@dataclass
class Candidate:
    source: str
    kind: str  # "model" | "task"
    encoder: str
    features: np.ndarray | None = None  # models: target features; tasks: source base features
    features_key: str | None = None  # tasks: blob of the source base features, loaded when needed
    probs: np.ndarray | None = None
    esm_key: str | None = None
    esm: object | None = None  # the loaded ESM, once per ranking (every esm_* estimator uses it)
    source_sha256: str | None = None
    meta: dict = field(default_factory=dict)


def _model_names(ctx, ds: Dataset, spec: RankingSpec) -> list[str]:
    if ds.kind == "features":
        names = ["features"] + sorted({k.split("_", 1)[1] for k in (ds.extra_blobs or {})})
    else:
        from app.services import models as models_svc

        names = models_svc.ranking_candidates(ctx, getattr(ds, "modality", None) or "text")
    if spec.sources:
        unknown = [n for n in spec.sources if n not in names]
        if unknown:
            raise Invalid(f"unknown model candidate(s) {', '.join(unknown)}; available: {', '.join(names)}")
        names = [n for n in names if n in spec.sources]
    if not names:
        raise Invalid("no model candidates are available")
    return names


def _task_rows(ctx, ds: Dataset, spec: RankingSpec) -> list[tuple[SourceTask, Dataset]]:
    with ctx.Session() as s:
        rows = s.execute(select(SourceTask, Dataset).join(Dataset, Dataset.id == SourceTask.dataset_id)
                         .where(SourceTask.status != "failed").order_by(SourceTask.name)).all()
    # several base encoders may serve sources; an NPZ target carries the service's base features only
    rows = [(t, d) for t, d in rows if d.sha256 != ds.sha256
            and (ds.kind != "features" or t.base_encoder == ctx.settings.base_encoder)]
    if spec.sources:
        have = {t.name for t, _ in rows}
        unknown = [n for n in spec.sources if n not in have]
        if unknown:
            raise Invalid(f"unknown source task(s) {', '.join(unknown)}; list them with GET /v1/sources")
        rows = [(t, d) for t, d in rows if t.name in spec.sources]
    return rows


def needs_job(ctx, spec: RankingSpec) -> bool:
    """True when the ranking needs feature extraction (or many uncached scores)."""
    ds, names = _validate(ctx, spec)
    if ds.kind == "features":
        return False
    with ctx.Session() as s:
        have = features_svc.cached_encoders(s, ds.sha256)
    if spec.candidates == "models":
        wanted = _model_names(ctx, ds, spec)
        if any(m not in have for m in wanted):
            return True
        n_pairs = len(wanted) * len(names)
    else:
        if any(t.base_encoder not in have for t, _ in _task_rows(ctx, ds, spec)):
            return True
        n_pairs = min(len(_task_rows(ctx, ds, spec)), spec.prefilter_k or 10**9) * len(names)
    if n_pairs <= SYNC_SCORE_LIMIT:
        return False
    with ctx.Session() as s:
        cached = len(scores_svc.lookup_target(s, ds.sha256, names, scores_svc.version()))
    return n_pairs - cached > SYNC_SCORE_LIMIT


# ---------------------------------------------------------------------- scoring
def _subsample(X: np.ndarray, m: int, seed: int = 0) -> np.ndarray:
    if X.shape[0] <= m:
        return X
    idx = np.sort(np.random.default_rng(seed).choice(X.shape[0], size=m, replace=False))
    return X[idx]


def _load_esm(ctx, cand: Candidate):
    """The candidate's ESM, read from its blob on first use and kept on the candidate."""
    from estimators.esm import EmbeddingSpaceMap

    if cand.esm is None:
        cand.esm = EmbeddingSpaceMap.load(ctx.blobs.path(cand.esm_key))
    return cand.esm


def _score_params(spec: RankingSpec, est: str, cand: Candidate, info) -> dict:
    p = dict((spec.params or {}).get(est, {}))
    if info.needs in ("esm", "domains"):
        p["source_sha256"] = cand.source_sha256
    if info.needs == "esm":
        p["esm"] = cand.esm_key
    if info.needs == "domains":
        p["max_rows"] = DOMAIN_MAX_ROWS
    return p


def _compute_one(ctx, est: str, info, cand: Candidate, X_target: np.ndarray | None, y: np.ndarray,
                 params: dict) -> float:
    user = {k: v for k, v in params.items() if k not in ("source_sha256", "esm", "max_rows")}
    if info.needs == "features":
        return estimators.score(est, cand.features, y, **user)
    if info.needs == "probs":
        return estimators.score(est, cand.probs, y, **user)
    if isinstance(X_target, dict):  # tasks: the target embedded by each source's own base encoder
        X_target = X_target[cand.encoder]
    if info.needs == "esm":
        return estimators.score(est, X_target, y, esm=_load_esm(ctx, cand), **user)
    # domains: target vs source base embeddings (loaded only now: cached scores never load them)
    if cand.features is None and cand.features_key is not None:
        cand.features = ctx.blobs.get_array(cand.features_key)
    return estimators.score(est, _subsample(X_target, DOMAIN_MAX_ROWS), _subsample(cand.features, DOMAIN_MAX_ROWS),
                            **user)


def _compute_with_fallback(ctx, est: str, info, cand: Candidate, X_target, y, params: dict,
                           spec: RankingSpec) -> tuple[float, str | None]:
    """``_compute_one``; when the defaults fail and the estimator has fallback settings
    (``estimators.ranking.FALLBACK_PARAMS``: N-LEEP with one mixture component per class, then
    with diagonal covariances) and the user set none, retry with those in turn.
    Returns ``(value, note about the fallback or None)``."""
    try:
        return _compute_one(ctx, est, info, cand, X_target, y, params), None
    except ValueError as exc:
        if est not in FALLBACK_PARAMS or (spec.params or {}).get(est):
            raise
        first = exc
    for kw in FALLBACK_PARAMS[est](int(np.unique(y).shape[0])):
        try:
            value = _compute_one(ctx, est, info, cand, X_target, y, {**params, **kw})
        except ValueError:
            continue
        return value, f"default settings failed ({str(first)[:160]}); used {kw}"
    raise first


def _skip_reason(info, cand: Candidate) -> str | None:
    if info.needs == "probs" and cand.probs is None:
        return f"{cand.source} has no source-class probabilities (NPZ probs_{cand.source})"
    if info.needs == "esm" and cand.esm_key is None:
        return f"source {cand.source} has no ESM ({cand.meta.get('status', 'not trained')})"
    if info.needs in ("features", "domains") and cand.features is None and cand.features_key is None:
        return f"{cand.source} has no base-encoder features"
    return None


def _zscores(values: dict[str, float], higher_is_better: bool) -> dict[str, float]:
    """Per-candidate z-scores of one estimator, direction-corrected (the default ranker's column)."""
    if not values:
        return {}
    v = np.array(list(values.values()), dtype=np.float64)
    return dict(zip(values, zscores(v if higher_is_better else -v).tolist()))


def _static_scores(cands: list[Candidate]) -> dict[str, float]:
    """The target-agnostic size baseline (log10 parameter count) when every model has a count."""
    out = {}
    for c in cands:
        params = c.meta.get("params")
        if params is None:
            return {}
        out[c.source] = static_score({"params": max(int(params), 1)})  # tf-idf: no pretrained weights
    return out


# ---------------------------------------------------------------------- observed prior
def _observed(ctx, target: Dataset, kind: str, sources: list[str]) -> tuple[dict, dict, dict]:
    """Feedback -> (observed {target_sha: {source: value}}, similarity {target_sha: sim},
    this target's own observations {source: {metric: value}})."""
    with ctx.Session() as s:
        rows = list(s.scalars(select(Feedback).where(Feedback.source.in_(sources))))
        if not rows:
            return {}, {}, {}
        shas = {r.target_sha256 for r in rows}
        emb_keys = dict(s.execute(select(Dataset.sha256, Dataset.task_embedding_blob)
                                  .where(Dataset.sha256.in_(shas | {target.sha256}))).all())
    own: dict[str, dict] = {}
    by_target: dict[str, dict[str, dict[str, list[float]]]] = {}
    for r in rows:
        v = r.value if r.higher_is_better else -r.value
        by_target.setdefault(r.target_sha256, {}).setdefault(r.metric, {}).setdefault(r.source, []).append(v)
        if r.target_sha256 == target.sha256:
            own.setdefault(r.source, {})[r.metric] = r.value
    observed: dict[str, dict[str, float]] = {}
    for sha, metrics in by_target.items():
        metric = max(metrics, key=lambda m: len(metrics[m]))  # the metric most sources report
        observed[sha] = {src: float(np.mean(vals)) for src, vals in metrics[metric].items()}

    def emb(sha):
        key = emb_keys.get(sha)
        return None if not key else np.asarray(ctx.blobs.get_array(key), dtype=np.float64).reshape(-1)

    t = emb(target.sha256)
    similarity = {}
    for sha in observed:
        if sha == target.sha256:
            similarity[sha] = 1.0
            continue
        o = emb(sha)
        similarity[sha] = float(np.dot(t, o) / (np.linalg.norm(t) * np.linalg.norm(o) + 1e-12)) \
            if t is not None and o is not None and o.shape == t.shape else 0.0
    return observed, similarity, own


def _prior(observed: dict, similarity: dict) -> dict[str, float]:
    return {k: float(v) for k, v in observed_prior(observed, similarity).items()
            if v is not None and math.isfinite(float(v))}


# ---------------------------------------------------------------------- the computation
def compute(ctx, spec: RankingSpec, progress: Callable[[float], None] | None = None) -> dict:
    t0 = time.perf_counter()
    progress = progress or (lambda p, message=None: None)
    ds, names = _validate(ctx, spec)
    y = datasets_svc.labels(ctx, ds)
    infos = {n: estimators.info(n) for n in names}
    from estimators.ranking import not_applicable

    task_type = _task_type(ds)
    if task_type != "classification":
        y = np.asarray(y, dtype=np.float64)  # regression targets / the multi-label 0/1 matrix
    skipped = {n: r for n in names if (r := not_applicable(n, task_type)) is not None}
    ver = scores_svc.version()
    cands: list[Candidate] = []
    X_target = None
    prefilter = None

    if spec.candidates == "models":
        models = _model_names(ctx, ds, spec)
        if ds.kind == "features":
            feats = {"features": ctx.blobs.get_array(ds.features_blob)}
            extras = ds.extra_blobs or {}
            for m in models:
                if m == "features":
                    cands.append(Candidate("features", "model", "npz:features", features=feats["features"]))
                    continue
                f = extras.get(f"features_{m}")
                p = extras.get(f"probs_{m}")
                cands.append(Candidate(m, "model", f"npz:{m}",
                                       features=ctx.blobs.get_array(f) if f else None,
                                       probs=ctx.blobs.get_array(p) if p else None))
        else:
            progress(0.0, f"extracting features with {', '.join(models)}")
            feats = features_svc.ensure(ctx, ds, models, progress=lambda p: progress(0.85 * p))
            with ctx.Session() as s:
                meta = {r.name: {"params": r.params, "dim": r.dim, "kind": r.kind}
                        for r in s.scalars(select(EncoderRow).where(EncoderRow.name.in_(models)))}
            from app.services.models import PROBS_SUFFIX

            cands = [Candidate(m, "model", m, features=feats[m], meta=meta.get(m, {}),
                               probs=features_svc.get_features(ctx, ds, m + PROBS_SUFFIX)) for m in models]
    else:
        base = ctx.settings.base_encoder
        rows = _task_rows(ctx, ds, spec)
        # the target is embedded once per base encoder that serves a source (the service's first)
        bases = [base] + sorted({t.base_encoder for t, _ in rows} - {base})
        if ds.kind == "features":
            X_by_base = {base: ctx.blobs.get_array(ds.features_blob)}
        else:
            progress(0.0, f"embedding the target with the base encoder(s) {', '.join(bases)}")
            X_by_base = features_svc.ensure(ctx, ds, bases, progress=lambda p: progress(0.6 * p))
        X_target = X_by_base
        if spec.prefilter_k is not None and len(rows) > spec.prefilter_k:
            # FAISS holds the sources of the service's base encoder; sources of other bases are all scored
            te = features_svc.task_embedding(X_by_base[base])
            hits = ctx.index.search(te, spec.prefilter_k)
            keep = {sid for sid, _ in hits}
            prefilter = {"k": spec.prefilter_k, "searched": len(rows),
                         "similarity": {t.name: round(sim, 6) for t, _ in rows for sid, sim in hits if t.id == sid}}
            rows = [(t, d) for t, d in rows if t.id in keep or t.base_encoder != base]
        with ctx.Session() as s:
            fsets = {(fs.dataset_sha256, fs.encoder): fs for fs in s.scalars(
                select(features_svc.FeatureSet).where(
                    features_svc.FeatureSet.encoder.in_(bases),
                    features_svc.FeatureSet.dataset_sha256.in_([d.sha256 for _, d in rows])))}
        for t, d in rows:
            fs = fsets.get((d.sha256, t.base_encoder))
            if fs is None and t.esm_blob is None:
                continue  # still being embedded (status pending): nothing to score it with yet
            cands.append(Candidate(
                t.name, "task", t.base_encoder, features_key=fs.blob if fs is not None else None,
                esm_key=t.esm_blob, source_sha256=d.sha256,
                meta={"status": t.status, "origin": t.origin, "n_examples": d.n_examples,
                      "n_classes": d.n_classes, "licence": t.licence}))
        if not cands:
            raise Invalid("no source task is ready yet (their base embeddings are still being computed); "
                          "retry when GET /v1/sources shows status 'ready'")

    # -- scores, through the cache
    with ctx.Session() as s:
        cache = scores_svc.lookup_target(s, ds.sha256, names, ver)
    entries = {c.source: {"scores": {}, "details": {}} for c in cands}
    new_rows, errors = [], []
    n_computed = n_cached = 0
    todo = [(c, n) for c in cands for n in names]
    for i, (c, est) in enumerate(todo):
        info = infos[est]
        if est in skipped:
            entries[c.source]["scores"][est] = None
            entries[c.source]["details"][est] = {"skipped": skipped[est], "cached": False}
            continue
        params = _score_params(spec, est, c, info)
        if task_type != "classification" and info.needs in ("features", "esm"):
            params["regression"] = True  # LogME on float targets (multi-label: the 0/1 matrix)
        ph = scores_svc.params_hash(params)
        k = scores_svc.key(c.source, ds.sha256, c.encoder, est, ph, ver)
        detail = {"encoder": c.encoder, "n": ds.n_examples, "version": ver,
                  "higher_is_better": info.higher_is_better}
        hit = cache.get(k)
        if hit is not None:
            value, detail["cached"] = hit.value, True
            n_cached += 1
        else:
            reason = _skip_reason(info, c)
            if reason is not None:
                entries[c.source]["scores"][est] = None
                entries[c.source]["details"][est] = dict(detail, cached=False, skipped=reason)
                continue
            t1 = time.perf_counter()
            try:
                value, fallback = _compute_with_fallback(ctx, est, info, c, X_target, y, params, spec)
            except (ValueError, TypeError) as exc:  # TypeError: unknown keyword in params
                msg = str(exc) if isinstance(exc, ValueError) else f"bad parameters for {est}: {exc}"
                errors.append(f"{est} on {c.source}: {msg}")
                entries[c.source]["scores"][est] = None
                entries[c.source]["details"][est] = dict(detail, cached=False, error=msg)
                continue
            if fallback is not None:
                detail["fallback"] = fallback
            seconds = time.perf_counter() - t1
            new_rows.append(dict(source=c.source, source_kind=c.kind, target_sha256=ds.sha256, encoder=c.encoder,
                                 estimator=est, params_hash=ph, params=params, version=ver, value=value,
                                 n=ds.n_examples, seconds=seconds))
            detail.update(cached=False, seconds=round(seconds, 4))
            n_computed += 1
        entries[c.source]["scores"][est] = value
        entries[c.source]["details"][est] = detail
        if c.kind == "task" and est == names[-1]:
            c.features = c.esm = None  # free the source's embeddings and ESM before the next source
        progress((0.85 if spec.candidates == "models" else 0.6) + 0.14 * (i + 1) / len(todo),
                 f"scoring {i + 1}/{len(todo)}")
    scores_svc.store_many(ctx, new_rows)
    if n_computed + n_cached == 0 and errors:
        raise Invalid("no candidate could be scored: " + "; ".join(errors[:3]))

    # -- combine: the default ranker's formula (estimators.ranking) on the cached scores
    weights = dict(DEFAULT_COLUMN_WEIGHTS) if spec.estimators is None else {"prior": DEFAULT_WEIGHTS["prior"]}
    columns = {est: _zscores({c: e["scores"][est] for c, e in entries.items() if e["scores"].get(est) is not None},
                             infos[est].higher_is_better) for est in names}
    pseudo: dict[str, dict[str, float]] = {}
    if spec.candidates == "models" and spec.estimators is None:
        static = _static_scores(cands)
        if static:
            columns["static"] = _zscores(static, True)
            pseudo["static"] = static
    use_prior = spec.use_feedback if spec.use_feedback is not None else spec.estimators is None
    own: dict = {}
    if use_prior:
        observed, similarity, own = _observed(ctx, ds, spec.candidates, list(entries))
        if observed:
            raw = {s_: v for s_, v in _prior(observed, similarity).items() if s_ in entries}
            if raw:
                mean = float(np.mean(list(raw.values())))
                columns["prior"] = _zscores({s_: raw.get(s_, mean) for s_ in entries}, True)
                pseudo["prior"] = raw
    ranking, order_by = [], {}
    for src, e in entries.items():
        total = weight = 0.0
        unweighted = []  # zero-weight columns (semb for tasks): they order the candidates left unscored
        for col, z in columns.items():
            if src in z:
                total += weights.get(col, 1.0) * z[src]
                weight += weights.get(col, 1.0)
                if weights.get(col, 1.0) == 0:
                    unweighted.append(z[src])
        combined = total / weight if weight > 0 else None
        order_by[src] = combined if combined is not None else (float(np.mean(unweighted)) if unweighted else None)
        cand = next(c for c in cands if c.source == src)
        item = {"source": src, "kind": cand.kind, "score": None if combined is None else round(combined, 6),
                "scores": e["scores"], "details": e["details"]}
        if cand.kind == "task":
            item["has_esm"] = cand.esm_key is not None
            item["source_info"] = cand.meta
        elif cand.meta:
            item["model_info"] = cand.meta
        for col, vals in pseudo.items():
            if src in vals:
                item[col] = round(vals[src], 6)
        if src in own:
            item["observed"] = own[src]
        if combined is None and order_by[src] is not None:
            item["note"] = ("no score from the weighted estimators: placed after the scored candidates, "
                            "ordered by " + ", ".join(c for c in columns if weights.get(c, 1.0) == 0 and src in columns[c]))
        ranking.append(item)
    ranking.sort(key=lambda r: (r["score"] is None, order_by[r["source"]] is None,
                                -(order_by[r["source"]] or 0.0), r["source"]))
    for i, r in enumerate(ranking, 1):
        r["rank"] = i
    progress(1.0)
    result = {
        "target": {"id": ds.id, "name": ds.name, "sha256": ds.sha256, "n_examples": ds.n_examples,
                   "n_classes": ds.n_classes, "kind": ds.kind, "task_type": task_type,
                   "modality": getattr(ds, "modality", None)},
        "candidates": spec.candidates,
        "estimators": names,
        "combine": {"method": "weighted mean of per-estimator z-scores across candidates "
                              "(lower-is-better estimators negated); see estimators.ranking",
                    "weights": {col: weights.get(col, 1.0) for col in columns}},
        "n_candidates": len(ranking),
        "ranking": ranking[: spec.top_k],
        "computed": n_computed,
        "cached": n_cached,
        "errors": errors[:20],
        "skipped": skipped,
        "seconds": round(time.perf_counter() - t0, 4),
    }
    if prefilter is not None:
        result["prefilter"] = prefilter
    if spec.candidates == "tasks":
        result["base_encoders"] = {b: sum(1 for c in cands if c.encoder == b) for b in sorted({c.encoder for c in cands})}
    log.info("ranking of %s (%s, %s): %d computed, %d cached in %.2fs", ds.id, spec.candidates,
             ",".join(names), n_computed, n_cached, result["seconds"])
    return result


# ---------------------------------------------------------------------- requests
def ranking_dict(r: Ranking, job: dict | None = None) -> dict:
    out = {"id": r.id, "status": r.status, "target": r.target_id, "candidates": r.candidates,
           "request": r.request, "job": r.job_id,
           "progress": 1.0 if r.status == "done" else (job or {}).get("progress", 0.0),
           "created_at": iso(r.created_at)}
    if r.status == "done" and r.result:
        out.update({k: v for k, v in r.result.items() if k not in ("candidates",)})
    if r.status == "failed":
        out["error"] = r.error
    if job is not None and r.status != "done":
        out["message"] = job.get("message")
    return out


def _finish(ctx, ranking_id: str, result: dict) -> None:
    with ctx.Session.begin() as s:
        r = s.get(Ranking, ranking_id)
        r.status, r.result, r.finished_at = "done", result, utcnow()


def _fail(ctx, ranking_id: str, error: str) -> None:
    with ctx.Session.begin() as s:
        r = s.get(Ranking, ranking_id)
        if r is not None:
            r.status, r.error, r.finished_at = "failed", error, utcnow()


def create(ctx, spec: RankingSpec, *, inline: bool = False) -> tuple[dict, bool]:
    """Create a ranking. Returns ``(body, done)``: done -> 200 with the ranking, else 202 + job.

    ``inline=True`` (the CLI) computes in the caller's thread even when a job is needed."""
    job_needed = needs_job(ctx, spec)
    if not job_needed:
        result = compute(ctx, spec)
        with ctx.Session.begin() as s:
            r = Ranking(target_id=spec.target, candidates=spec.candidates, request=spec.as_dict(),
                        status="done", result=result, finished_at=utcnow())
            s.add(r)
        return ranking_dict(r), True
    with ctx.Session.begin() as s:
        job = ctx.jobs.create(s, "ranking", message=f"queued: {spec.candidates} ranking of {spec.target}")
        r = Ranking(target_id=spec.target, candidates=spec.candidates, request=spec.as_dict(),
                    status="queued", job_id=job.id)
        s.add(r)
        s.flush()
        ranking_id, job_id = r.id, job.id

    def run(progress):
        with ctx.Session.begin() as s:
            s.get(Ranking, ranking_id).status = "running"
        result = compute(ctx, spec, progress)
        _finish(ctx, ranking_id, result)
        return {"ranking": ranking_id, "computed": result["computed"], "cached": result["cached"]}

    on_error = lambda err: _fail(ctx, ranking_id, err)  # noqa: E731
    if inline:
        ctx.jobs.run_inline(job_id, run, on_error)
        return get(ctx, ranking_id), True
    ctx.jobs.submit(job_id, run, on_error)
    return {"id": ranking_id, "status": "queued", "job": job_id, "progress": 0.0}, False


def get(ctx, ranking_id: str) -> dict:
    with ctx.Session() as s:
        r = s.get(Ranking, ranking_id)
        if r is None:
            raise NotFound(f"no ranking with id {ranking_id!r}")
    job = ctx.jobs.get(r.job_id) if r.job_id and r.status != "done" else None
    if job is not None and job["status"] == "failed" and r.status != "failed":
        with ctx.Session() as s:
            r = s.get(Ranking, ranking_id)
    return ranking_dict(r, job)
