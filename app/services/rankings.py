"""Rankings: which source tasks / pretrained models should a target dataset transfer from?

The default estimators are the library's (``estimators.ranking.DEFAULT_ESTIMATORS``):

``models``: the target is embedded by each candidate encoder (feature cache) and scored with
LogME, GBC, the shrinkage H-score and TMI (the set chosen by leave-one-benchmark-out,
``bench/results/lobo.md``; LEEP / N-LEEP only when requested by name); an NPZ target ranks
the feature arrays it carries (``features``, ``features_<model>``, ``probs_<model>``).

``tasks``: the target is embedded once with the base encoder; each source task with an ESM is
scored by LogME, ETran-LDA and the shrinkage H-score of the target mapped through that ESM
(``esm_logme``, ``esm_etran_lda``, ``esm_hscore_shrinkage``); ``semb`` (similarity of the two
domains' mean base embeddings) is reported with weight 0 and orders the sources that have no ESM
yet, after the others. ``prefilter_k`` scores only the sources nearest in the FAISS task index.

A ranking is three steps: ``build_candidates`` (what is ranked, with its inputs),
``score_table`` (every score through the SQL cache, so a repeated request computes nothing;
``computed`` and ``cached`` counts in the response, ``cached`` per score) into the library's
``estimators.ranking.ScoreTable``, and ``shape_response`` around the library's
``estimators.ranking.combine`` -- the one combiner, whose docstring states the failure and
fallback policy (an estimator failing for any candidate is skipped for all; N-LEEP's fallback
settings apply to every candidate; a source without an ESM yet comes last, unscored). The
combination also takes, for default requests, the ``static`` size baseline (models; weight 0,
reported) and the prior from observed fine-tuning results (``POST /v1/feedback``;
``app.services.prior``: related targets only, applied only where it can change the order, with
its evidence in the response's ``prior`` block; weight 1). A ranking where no estimator
produced a value is a failed ranking with the reason.
Every ranking then runs the library's bootstrap over the target's examples
(``estimators.uncertainty``; ``bootstrap`` resamples, default 100, cost-bounded, draws cached):
each candidate carries ``interval``, ``p_top`` and ``tied_with_top``, the response ``uncertainty``.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

import estimators
from app.core.errors import Invalid, NotFound
from app.core.logging import get_logger
from app.core.progress import ProgressFn, no_progress, scaled
from app.core.status import JobStatus, RankingStatus, SourceStatus
from app.db.models import (
    DEFAULT_OWNER,
    Dataset,
    EncoderRow,
    FeatureSet,
    Ranking,
    Score,
    SourceTask,
    iso,
    utcnow,
)
from app.services import datasets as datasets_svc
from app.services import features as features_svc
from app.services import scores as scores_svc
from app.services.prior import feedback_prior
from app.services.tenancy import visible
from estimators.ranking import DEFAULT_ESTIMATORS as LIBRARY_DEFAULTS
from estimators.ranking import (
    Combined,
    RankingFailed,
    ScoreTable,
    Unavailable,
    combine,
    default_weights,
    fallbacks_for,
    static_score,
)
from estimators.uncertainty import DEFAULT_B, Bootstrap, bootstrap, rescore

if TYPE_CHECKING:
    from app.services.context import Context

log = get_logger("rankings")

#: The library's default estimators per kind (``estimators.ranking.DEFAULT_ESTIMATORS``); tasks are
#: scored through each source's stored ESM (``esm_<name>``: the same numbers as ``<name>`` on the
#: ESM-mapped target features). ``semb`` is computed for tasks with weight 0: it orders the sources
#: that have no ESM yet, after those that have one.
DEFAULT_ESTIMATORS = {"models": list(LIBRARY_DEFAULTS["models"]),
                      "tasks": [f"esm_{e}" for e in LIBRARY_DEFAULTS["tasks"]] + ["semb"]}
#: Column weights of a default ranking (explicitly requested estimators all weigh 1).
DEFAULT_COLUMN_WEIGHTS = {**default_weights(False),
                          **{f"esm_{e}": default_weights(False)[e] for e in LIBRARY_DEFAULTS["tasks"]},
                          "semb": 0.0}
NEEDS_FOR = {"models": ("features", "probs"), "tasks": ("esm", "domains")}
SYNC_SCORE_LIMIT = 64  # more uncached scores than this -> run as a job
DOMAIN_MAX_ROWS = 2000  # divergences on at most this many rows per domain (seeded subsample)
SERVICE_PARAMS = ("source_sha256", "esm", "max_rows")  # cache-key parameters the service adds
#: The bootstrap's cost bound: at most this many estimator evaluations per ranking (B is lowered
#: to fit, never below MIN_BOOTSTRAP); see estimators.uncertainty.
BOOTSTRAP_BUDGET = 3000
MIN_BOOTSTRAP = 20
#: ... and to fit this many seconds of re-scoring, estimated from each cell's point-score time (a
#: resample costs about what the point score did): a large target's few cells can each take
#: seconds, which the count above does not see.
BOOTSTRAP_SECONDS = 20.0
BOOTSTRAP_PREFIX = "bootstrap:"  # cached bootstrap draws: estimator "bootstrap:<name>" in the score cache
#: A models ranking's progress: feature extraction up to this fraction, then scoring (one message
#: per estimator x candidate) for MODELS_SCORING, then the bootstrap (one message per cell) to 0.99.
MODELS_EXTRACTION = 0.8
BOOTSTRAP_BLOCK = 10  # resamples of a features estimator between two progress reports
MODELS_SCORING = 0.15


@dataclass
class RankingSpec:
    target: str
    candidates: str
    estimators: list[str] | None = None
    top_k: int = 10
    prefilter_k: int | None = None
    sources: list[str] | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    use_feedback: bool | None = None
    bootstrap: int = DEFAULT_B
    owner: str | None = None  # who asks: its own and the public datasets, sources and feedback (None: all)
    two_stage: bool | None = None  # tasks: None = above TRANSFERRANK_TWO_STAGE_ABOVE, True = always, False = never

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "candidates": self.candidates, "estimators": self.estimators,
                "top_k": self.top_k, "prefilter_k": self.prefilter_k, "sources": self.sources,
                "params": self.params, "use_feedback": self.use_feedback, "bootstrap": self.bootstrap,
                **({} if self.two_stage is None else {"two_stage": self.two_stage})}


@dataclass
class Plan:
    """A validated request: the target dataset and the estimators to score with."""

    spec: RankingSpec
    ds: Dataset
    names: list[str]


# ---------------------------------------------------------------------- validation
def _validate(ctx: Context, spec: RankingSpec) -> Plan:
    """Check a request once (400/404/422 on bad input) and return what it ranks with."""
    if spec.candidates not in NEEDS_FOR:
        raise Invalid(f"candidates must be 'models' or 'tasks', got {spec.candidates!r}")
    ds = datasets_svc.get(ctx, spec.target, spec.owner)
    if ds.kind == "esm":
        raise Invalid(f"dataset {ds.id} is the placeholder of an imported ESM: it holds no examples to rank")
    if spec.candidates == "tasks" and ds.kind == "image":
        raise Invalid("the source tasks are text tasks embedded by a text base encoder; rank an image dataset "
                      "with candidates='models' (vision models)")
    names = spec.estimators or _defaults_for(ctx, ds, spec)
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
    if isinstance(spec.bootstrap, bool) or not isinstance(spec.bootstrap, int) or not 0 <= spec.bootstrap <= 1000:
        raise Invalid(f"bootstrap must be an integer in 0..1000 (resamples; 0 = none), got {spec.bootstrap!r}")
    if spec.prefilter_k is not None and spec.prefilter_k < 1:
        raise Invalid("prefilter_k must be >= 1")
    if spec.two_stage is not None and not isinstance(spec.two_stage, bool):
        raise Invalid(f"two_stage must be true, false or null, got {spec.two_stage!r}")
    if spec.two_stage and (spec.candidates != "tasks" or spec.estimators is not None or spec.params
                           or spec.prefilter_k is not None):
        raise Invalid("two_stage applies to default tasks rankings only (no estimators, params or prefilter_k)")
    if spec.prefilter_k is not None and spec.candidates != "tasks":
        raise Invalid("prefilter_k applies to candidates='tasks' only")
    if spec.candidates == "tasks" and not _task_rows(ctx, ds, spec):
        raise Invalid("there are no source tasks to rank; register one with POST /v1/sources "
                      "(or start the service with the demo catalogue)")
    if spec.candidates == "tasks" and ds.kind == "features":
        base_dim = _base_dim(ctx)
        if (ds.meta or {}).get("dim") != base_dim:
            raise Invalid(f"a tasks ranking of an NPZ dataset needs features from the base encoder "
                          f"{ctx.settings.base_encoder} (dim {base_dim}); this one has dim "
                          f"{(ds.meta or {}).get('dim')}. "
                          "Upload the texts instead, or rank candidates='models'")
    return Plan(spec, ds, list(names))


def _task_type(ds: Dataset) -> str:
    return getattr(ds, "task_type", None) or "classification"


def _defaults_for(ctx: Context, ds: Dataset, spec: RankingSpec) -> list[str]:
    """The default estimators for this target type (``estimators.ranking``)."""
    from estimators.ranking import DEFAULT_ESTIMATORS_BY_TARGET

    t = _task_type(ds)
    if t == "classification":
        return list(DEFAULT_ESTIMATORS[spec.candidates])
    base = list(DEFAULT_ESTIMATORS_BY_TARGET[t][spec.candidates])
    return base if spec.candidates == "models" else [f"esm_{e}" for e in base] + ["semb"]


def _labels(ctx: Context, ds: Dataset) -> np.ndarray:
    """Class indices; float targets for regression, the 0/1 matrix (as floats) for multilabel."""
    y = datasets_svc.labels(ctx, ds)
    return y if _task_type(ds) == "classification" else np.asarray(y, dtype=np.float64)


def _base_dim(ctx: Context) -> int | None:
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
    meta: dict[str, Any] = field(default_factory=dict)
    #: N-LEEP mixture posteriors by parameters hash: the point score's fit, reused by the bootstrap
    nleep_posteriors: dict[str, np.ndarray] = field(default_factory=dict)


def _model_names(ctx: Context, ds: Dataset, spec: RankingSpec) -> list[str]:
    if ds.kind == "features":
        names = ["features"] + sorted({k.split("_", 1)[1] for k in (ds.extra_blobs or {})})
    else:
        from app.services import models as models_svc

        allowed = set(models_svc.ranking_candidates(ctx, getattr(ds, "modality", None) or "text", spec.owner))
        with ctx.Session() as s:
            names = [n for n in s.scalars(select(EncoderRow.name).where(EncoderRow.enabled.is_(True),
                                                                        visible(EncoderRow.owner, spec.owner))
                                          .order_by(EncoderRow.name)) if n in allowed]
    if spec.sources:
        unknown = [n for n in spec.sources if n not in names]
        if unknown:
            raise Invalid(f"unknown model candidate(s) {', '.join(unknown)}; available: {', '.join(names)}")
        names = [n for n in names if n in spec.sources]
    if not names:
        raise Invalid("no model candidates are available")
    return names


def _task_rows(ctx: Context, ds: Dataset, spec: RankingSpec) -> list[tuple[SourceTask, Dataset]]:
    with ctx.Session() as s:
        found = s.execute(select(SourceTask, Dataset).join(Dataset, Dataset.id == SourceTask.dataset_id)
                          .where(SourceTask.status != SourceStatus.FAILED,
                                 visible(SourceTask.owner, spec.owner))
                          .order_by(SourceTask.name)).all()
    # several base encoders may serve sources; an NPZ target carries the service's base features only
    rows: list[tuple[SourceTask, Dataset]] = [
        (t, d) for t, d in found if d.sha256 != ds.sha256
        and (ds.kind != "features" or t.base_encoder == ctx.settings.base_encoder)]
    if spec.sources:
        have = {t.name for t, _ in rows}
        unknown = [n for n in spec.sources if n not in have]
        if unknown:
            raise Invalid(f"unknown source task(s) {', '.join(unknown)}; list them with GET /v1/sources")
        rows = [(t, d) for t, d in rows if t.name in spec.sources]
    return rows


def cost(ctx: Context, plan: Plan) -> tuple[float, int]:
    """``(operations, pairs)``: a rough count of floating-point operations of the ranking if
    nothing were cached, and the number of (candidate, estimator) pairs: per pair
    ``n d (min(n, d) + C)`` for models (SVD-class estimators and per-class terms), ``n d (d + C)``
    for tasks (the ESM map and the d x d estimators)."""
    spec, ds, names = plan.spec, plan.ds, plan.names
    n, C = float(ds.n_examples), float(ds.n_classes)
    d = float((ds.meta or {}).get("dim") or _base_dim(ctx) or 768)
    if spec.candidates == "models":
        pairs = len(_model_names(ctx, ds, spec)) * len(names)
        return pairs * n * d * (min(n, d) + C), pairs
    pairs = min(len(_task_rows(ctx, ds, spec)), spec.prefilter_k or 10**9) * len(names)
    return pairs * n * d * (d + C), pairs


def needs_job(ctx: Context, plan: Plan) -> bool:
    """True when the ranking needs feature extraction, many uncached scores, or its uncached cost
    is above ``TRANSFERRANK_SYNC_COST_LIMIT`` (then it runs as a job, off the request thread)."""
    spec, ds, names = plan.spec, plan.ds, plan.names
    if _two_stage(ctx, plan):
        return True  # a big catalogue: the first stage alone scores every source (the memo answers repeats)
    ops, pairs = cost(ctx, plan)
    if ops > ctx.settings.sync_cost_limit:
        with ctx.Session() as s:
            cached = len(scores_svc.lookup_target(s, ds.sha256, names, scores_svc.version()))
        if ops * max(0, pairs - cached) / max(pairs, 1) > ctx.settings.sync_cost_limit:
            return True
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


def _two_stage(ctx: Context, plan: Plan) -> bool:
    """Does this ranking run in two stages (``app.services.two_stage``)?"""
    from app.services import two_stage

    spec = plan.spec
    if spec.candidates != "tasks" or spec.two_stage is False:
        return False
    return two_stage.applies(ctx, spec, _task_type(plan.ds), len(_task_rows(ctx, plan.ds, spec)))


# ---------------------------------------------------------------------- candidate building
@dataclass
class CandidateSet:
    """What a ranking scores: the candidates, the target's labels and (tasks) base features."""

    cands: list[Candidate]
    y: np.ndarray
    X_target: dict[str, np.ndarray] | None = None  # tasks: the target under each base encoder
    prefilter: dict[str, Any] | None = None
    timings: dict[str, Any] = field(default_factory=dict)  # extraction seconds (models)


def _blob(ds: Dataset) -> str:
    """The features blob of an NPZ dataset (every NPZ upload has one)."""
    if ds.features_blob is None:
        raise Invalid(f"dataset {ds.id} has no stored features")
    return ds.features_blob


def _npz_model_candidates(ctx: Context, ds: Dataset, models: list[str]) -> list[Candidate]:
    extras = ds.extra_blobs or {}
    out = []
    for m in models:
        if m == "features":
            out.append(Candidate("features", "model", "npz:features", features=ctx.blobs.get_array(_blob(ds))))
            continue
        f, p = extras.get(f"features_{m}"), extras.get(f"probs_{m}")
        out.append(Candidate(m, "model", f"npz:{m}", features=ctx.blobs.get_array(f) if f else None,
                             probs=ctx.blobs.get_array(p) if p else None))
    return out


def _encoder_candidates(ctx: Context, ds: Dataset, models: list[str], progress: ProgressFn,
                        timings: dict[str, Any]) -> list[Candidate]:
    progress(0.0, f"extracting features with {', '.join(models)}")
    feats = features_svc.ensure(ctx, ds, models, progress=scaled(progress, 0.0, MODELS_EXTRACTION), timings=timings)
    with ctx.Session() as s:
        meta = {r.name: {"params": r.params, "dim": r.dim, "kind": r.kind}
                for r in s.scalars(select(EncoderRow).where(EncoderRow.name.in_(models)))}
    from app.services.models import PROBS_SUFFIX  # a head's source-class probabilities, kept apart

    return [Candidate(m, "model", m, features=feats[m], meta=meta.get(m, {}),
                      probs=features_svc.get_features(ctx, ds, m + PROBS_SUFFIX)) for m in models]


def _task_candidates(ctx: Context, plan: Plan, progress: ProgressFn) -> CandidateSet:
    spec, ds = plan.spec, plan.ds
    base = ctx.settings.base_encoder
    rows = _task_rows(ctx, ds, spec)
    # the target is embedded once per base encoder that serves a source (the service's first)
    bases = [base] + sorted({t.base_encoder for t, _ in rows} - {base})
    if ds.kind == "features":
        X_target = {base: ctx.blobs.get_array(_blob(ds))}
    else:
        progress(0.0, f"embedding the target with the base encoder(s) {', '.join(bases)}")
        X_target = features_svc.ensure(ctx, ds, bases, progress=scaled(progress, 0.0, 0.6))
    prefilter = None
    if spec.prefilter_k is not None and len(rows) > spec.prefilter_k:
        # FAISS holds the sources of the service's base encoder; sources of other bases are all scored
        ids = {t.id for t, _ in rows}  # the index holds every owner's sources: search past the others
        hidden = max(ctx.index.describe()["sources"] - len(rows), 0)
        hits = [h for h in ctx.index.search(features_svc.task_embedding(X_target[base]), spec.prefilter_k + hidden)
                if h[0] in ids][:spec.prefilter_k]
        keep = {sid for sid, _ in hits}
        prefilter = {"k": spec.prefilter_k, "searched": len(rows),
                     "similarity": {t.name: round(sim, 6) for t, _ in rows for sid, sim in hits if t.id == sid}}
        rows = [(t, d) for t, d in rows if t.id in keep or t.base_encoder != base]
    with ctx.Session() as s:
        fsets = {(fs.dataset_sha256, fs.encoder): fs for fs in s.scalars(
            select(FeatureSet).where(
                FeatureSet.encoder.in_(bases),
                FeatureSet.dataset_sha256.in_([d.sha256 for _, d in rows])))}
    cands = []
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
    return CandidateSet(cands, _labels(ctx, ds), X_target, prefilter)


def build_candidates(ctx: Context, plan: Plan, progress: ProgressFn = no_progress) -> CandidateSet:
    """The candidates of a ranking with their inputs: an NPZ target's feature sets, each enabled
    encoder's embeddings of the target (models), or the catalogue's source tasks (tasks)."""
    if plan.spec.candidates == "tasks":
        return _task_candidates(ctx, plan, progress)
    models = _model_names(ctx, plan.ds, plan.spec)
    timings: dict[str, Any] = {}
    cands = (_npz_model_candidates(ctx, plan.ds, models) if plan.ds.kind == "features"
             else _encoder_candidates(ctx, plan.ds, models, progress, timings))
    return CandidateSet(cands, _labels(ctx, plan.ds), timings=timings)


# ---------------------------------------------------------------------- cached scoring
@dataclass
class ScoredTable:
    """The library's score table of a ranking, with the service's per-cell details."""

    table: ScoreTable
    details: dict[str, dict[str, dict[str, Any]]]  # source -> estimator -> detail
    computed: int = 0
    cached: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # estimator -> seconds computing its cells
    cell_seconds: dict[tuple[str, str], float] = field(default_factory=dict)  # (source, estimator) -> point-score s


class _CachedScorer:
    """Scores (candidate, estimator, parameters) cells through the SQL cache.

    Every computed value is stored under the hash of the parameters that produced it
    (fallback settings included), so a later lookup finds exactly that value again."""

    def __init__(self, ctx: Context, plan: Plan, cs: CandidateSet):
        self.ctx, self.plan, self.cs = ctx, plan, cs
        self.ver = scores_svc.version()
        with ctx.Session() as s:
            self.cache: dict[tuple[str, ...], Score] = scores_svc.lookup_target(s, plan.ds.sha256, plan.names, self.ver)
        self.new_rows: list[dict[str, Any]] = []
        self.details: dict[str, dict[str, dict[str, Any]]] = {c.source: {} for c in cs.cands}
        self.computed = self.cached = 0
        self.fresh: set[tuple[str, ...]] = set()  # keys this ranking just computed in bulk (task_scoring)
        self.seconds: dict[str, float] = {}  # estimator -> seconds spent computing its cells (fallbacks too)
        self.cell_seconds: dict[tuple[str, str], float] = {}  # (source, estimator) -> seconds, cached or now

    def value(self, cand: Candidate, est: str, kw: dict[str, Any]) -> float:
        """The value of one cell; ``Unavailable`` when the candidate lacks the input."""
        info = estimators.info(est)
        ds = self.plan.ds
        from estimators.ranking import not_applicable

        reason = not_applicable(est, _task_type(ds)) or _skip_reason(info, cand)
        if _task_type(ds) != "classification" and info.needs in ("features", "esm"):
            kw = dict(kw, regression=True)  # LogME on float targets (multi-label: the 0/1 matrix)
        detail: dict[str, Any] = {"encoder": cand.encoder, "n": ds.n_examples, "version": self.ver,
                                  "higher_is_better": info.higher_is_better}
        params = _score_params(kw, info, cand)
        ph = scores_svc.params_hash(params)
        k = scores_svc.key(cand.source, ds.sha256, cand.encoder, est, ph, self.ver)
        hit = self.cache.get(k)
        if hit is not None:
            fresh = k in self.fresh
            self.cell_seconds[(cand.source, est)] = float(hit.seconds or 0.0)
            self.details[cand.source][est] = dict(detail, cached=not fresh)
            if fresh:
                self.computed += 1
            else:
                self.cached += 1
            return float(hit.value)
        if reason is not None:
            self.details[cand.source][est] = dict(detail, cached=False, skipped=reason)
            raise Unavailable(reason)
        t1 = time.perf_counter()
        value = _compute_one(self.ctx, est, info, cand, self.cs.X_target, self.cs.y, params, ph)
        seconds = time.perf_counter() - t1
        self.seconds[est] = self.seconds.get(est, 0.0) + seconds
        self.cell_seconds[(cand.source, est)] = seconds
        self.new_rows.append(dict(source=cand.source, source_kind=cand.kind, target_sha256=ds.sha256,
                                  encoder=cand.encoder, estimator=est, params_hash=ph, params=params,
                                  version=self.ver, value=value, n=ds.n_examples, seconds=seconds))
        self.details[cand.source][est] = dict(detail, cached=False, seconds=round(seconds, 4))
        self.computed += 1
        return value


def score_table(ctx: Context, plan: Plan, cs: CandidateSet, progress: ProgressFn = no_progress) -> ScoredTable:
    """Every (candidate, estimator) score through the cache into the library's ``ScoreTable``.

    The defaults are scored candidate by candidate (each task's ESM is read once and freed), then
    each column goes through ``ScoreTable.score_column`` -- the library's fallback policy --
    reading those results, and scoring (through the cache) only what a fallback needs."""
    spec, names = plan.spec, plan.names
    models = spec.candidates == "models"
    start = MODELS_EXTRACTION if models else 0.6
    width = MODELS_SCORING if models else 0.14
    fresh: set[tuple[str, ...]] = set()
    base = ctx.settings.base_encoder
    if spec.candidates == "tasks" and cs.X_target is not None and base in cs.X_target \
            and _task_type(plan.ds) == "classification":  # default ESM scores: statistics path, on the workers
        from app.services import task_scoring

        def params_of(est: str, c: Candidate) -> dict[str, Any]:
            return _score_params(dict((spec.params or {}).get(est, {})), estimators.info(est), c)

        fresh = task_scoring.prefill(ctx, plan.ds.sha256, plan.ds.n_examples, ctx.settings.base_encoder,
                                     cs.X_target[base], cs.y, [c for c in cs.cands if c.encoder == base],
                                     names, params_of,
                                     progress=scaled(progress, 0.6, 0.14))["keys"]
        start = 0.74
    scorer = _CachedScorer(ctx, plan, cs)
    scorer.fresh = fresh
    by_name = {c.source: c for c in cs.cands}
    first: dict[tuple[str, str], float | BaseException] = {}
    n_cells = len(cs.cands) * len(names)
    for i, c in enumerate(cs.cands):
        for j, est in enumerate(names):
            kw = dict((spec.params or {}).get(est, {}))
            if models:  # few, costly cells: name each one (tasks report per source below)
                cell_no = i * len(names) + j
                progress(start + width * cell_no / n_cells,
                         f"scoring {est} on {c.source} (score {cell_no + 1}/{n_cells})")
            try:
                first[c.source, est] = scorer.value(c, est, kw)
            except Exception as exc:  # noqa: BLE001 -- recorded; score_column applies the policy
                first[c.source, est] = exc
        if c.kind == "task":
            c.features = c.esm = None  # free the source's embeddings and ESM before the next source
        if not models:
            progress(start + width * (i + 1) / len(cs.cands), f"scoring {i + 1}/{len(cs.cands)}")
    table = ScoreTable(list(by_name))
    n_classes = int(np.unique(cs.y).shape[0])
    for est in names:
        user = dict((spec.params or {}).get(est, {}))

        def cell(source: str, kw: dict[str, Any], est: str = est, user: dict[str, Any] = user) -> float:
            if kw == user:
                got = first[source, est]
                if isinstance(got, BaseException):
                    raise got
                return got
            return scorer.value(by_name[source], est, kw)

        table.score_column(est, cell, higher_is_better=estimators.info(est).higher_is_better,
                           params=user, fallbacks=fallbacks_for(est, n_classes, (spec.params or {}).get(est)))
        for source, note in table.notes[est].items():
            scorer.details[source][est]["fallback"] = note
        for source, why in table.errors[est].items():
            scorer.details[source][est] = dict(scorer.details[source].get(est, {}), cached=False, error=why)
        if table.errors[est]:  # the column is dropped for every candidate: say so on every cell
            for source in by_name:
                if source not in table.errors[est] and est in scorer.details[source]:
                    scorer.details[source][est]["skipped"] = f"{est} failed on another candidate"
    if spec.candidates == "models" and spec.estimators is None:
        _add_static(table, cs.cands)
    datasets_svc.store_scores(ctx, plan.ds.id, scorer.new_rows)  # NotFound if the target was deleted meanwhile
    return ScoredTable(table, scorer.details, scorer.computed, scorer.cached,
                       {est: round(sec, 3) for est, sec in scorer.seconds.items()}, scorer.cell_seconds)


def _score_params(kw: dict[str, Any], info: estimators.EstimatorInfo, cand: Candidate) -> dict[str, Any]:
    """The parameters a cached score is keyed by: the estimator's own plus the source's identity."""
    p = dict(kw)
    if info.needs in ("esm", "domains"):
        p["source_sha256"] = cand.source_sha256
    if info.needs == "esm":
        p["esm"] = cand.esm_key
    if info.needs == "domains":
        p["max_rows"] = DOMAIN_MAX_ROWS
    return p


def _add_static(table: ScoreTable, cands: list[Candidate]) -> None:
    """The target-agnostic size baseline (log10 parameter count), when every model has a count."""
    if any(c.meta.get("params") is None for c in cands):
        return
    table.add_column("static")
    for c in cands:  # tf-idf has no pretrained weights: count 1
        table.set("static", c.source, float(static_score({"params": max(int(c.meta["params"]), 1)}) or 0.0))


# ---------------------------------------------------------------------- scoring
def _subsample(X: np.ndarray, m: int, seed: int = 0) -> np.ndarray:
    if X.shape[0] <= m:
        return X
    idx = np.sort(np.random.default_rng(seed).choice(X.shape[0], size=m, replace=False))
    return X[idx]


def _load_esm(ctx: Context, cand: Candidate) -> Any:
    """The candidate's ESM, read from its blob on first use and kept on the candidate."""
    from estimators.esm import EmbeddingSpaceMap

    if cand.esm is None:
        if cand.esm_key is None:
            raise Unavailable(f"source {cand.source} has no ESM")
        cand.esm = EmbeddingSpaceMap.load(ctx.blobs.path(cand.esm_key))
    return cand.esm


def _present(a: np.ndarray | None, why: str) -> np.ndarray:
    if a is None:
        raise Unavailable(why)
    return a


def _compute_one(ctx: Context, est: str, info: estimators.EstimatorInfo, cand: Candidate,
                 X_target: dict[str, np.ndarray] | np.ndarray | None, y: np.ndarray,
                 params: dict[str, Any], params_hash: str | None = None) -> float:
    user = {k: v for k, v in params.items() if k not in SERVICE_PARAMS}
    # the estimator itself runs on the backend's worker processes (off the API process's GIL)
    def score(*args: Any, **kw: Any) -> float:
        return float(ctx.backend.submit_call(estimators.score, *args, **kw).result())

    if est == "nleep" and params_hash is not None and not user.get("regression"):
        # nleep(X, y) = LEEP(nleep_posteriors(X, y), y): the mixture's posteriors are kept on the
        # candidate so that the bootstrap resamples their LEEP without fitting the mixture again
        from estimators._validation import check_labels
        from estimators.leep import leep_from_probs
        from estimators.nleep import nleep_posteriors

        try:
            P = np.asarray(ctx.backend.submit_call(nleep_posteriors, _present(
                cand.features, f"{cand.source} has no features"), y, **user).result())
        except TypeError as exc:
            raise ValueError(f"invalid parameters for nleep: {exc}") from None
        value = leep_from_probs(P, *check_labels(y, P.shape[0]))  # as nleep() does
        if not np.isfinite(value):
            raise ValueError(f"nleep produced a non-finite value ({value}) on this input")
        cand.nleep_posteriors[params_hash] = P
        return value
    if info.needs == "features":
        return score(est, _present(cand.features, f"{cand.source} has no features"), y, **user)
    if info.needs == "probs":
        return score(est, _present(cand.probs, f"{cand.source} has no source-class probabilities"), y, **user)
    if isinstance(X_target, dict):  # tasks: the target embedded by this source's own base encoder
        X_target = X_target[cand.encoder]
    if info.needs == "esm":
        return score(est, _present(X_target, "the target has no base-encoder features"), y,
                     esm=_load_esm(ctx, cand), **user)
    # domains: target vs source base embeddings (loaded only now: cached scores never load them)
    if cand.features is None and cand.features_key is not None:
        cand.features = ctx.blobs.get_array(cand.features_key)
    if cand.features is None or X_target is None:
        raise Unavailable(f"{cand.source} has no base-encoder features")
    return score(est, _subsample(X_target, DOMAIN_MAX_ROWS), _subsample(cand.features, DOMAIN_MAX_ROWS), **user)


def _skip_reason(info: estimators.EstimatorInfo, cand: Candidate) -> str | None:
    if info.needs == "probs" and cand.probs is None:
        return f"{cand.source} has no source-class probabilities (NPZ probs_{cand.source})"
    if info.needs == "esm" and cand.esm_key is None:
        return f"source {cand.source} has no ESM ({cand.meta.get('status', 'not trained')})"
    if info.needs in ("features", "domains") and cand.features is None and cand.features_key is None:
        return f"{cand.source} has no base-encoder features"
    return None


# ---------------------------------------------------------------------- two-stage
def _monotone(progress: ProgressFn) -> ProgressFn:
    """``progress`` that never reports a smaller fraction than before (messages still pass)."""
    top = [0.0]

    def report(fraction: float, message: str | None = None, /) -> None:
        top[0] = max(top[0], float(fraction))
        progress(top[0], message)

    return report


def _two_stage_response(result: dict[str, Any], plan: Plan, full: CandidateSet, fs: Any) -> None:
    """Mark a two-stage ranking's items (``stage``) and add its ``two_stage`` block; the
    first-stage-only sources follow the exactly scored ones up to ``top_k``."""
    from app.services import two_stage

    for item in result["ranking"]:
        item["stage"] = "exact"
        if item["source"] in fs.scores:
            item["first_stage"] = {"score": fs.scores[item["source"]],
                                   two_stage.FIRST_STAGE: fs.lowrank.get(item["source"]),
                                   two_stage.EXACT_FIRST: fs.lda.get(item["source"])}
    n_exact = result["n_candidates"]
    by_name = {c.source: c for c in full.cands}
    result["ranking"] += two_stage.first_stage_items(fs, by_name, plan.names, n_exact + 1,
                                                     plan.spec.top_k - len(result["ranking"]))
    result["n_candidates"] = len(full.cands)
    result["n_exact"] = n_exact
    result["two_stage"] = two_stage.describe(fs, len(full.cands))
    result["computed"] += fs.computed
    result["cached"] += fs.cached


def _bootstrap_top(ctx: Context, plan: Plan, cs: CandidateSet, st: ScoredTable, res: Combined,
                   prior: dict[str, float] | None) -> Bootstrap | None:
    """A two-stage ranking's bootstrap: the best ``two_stage.BOOTSTRAP_TOP`` exactly scored
    sources re-ranked among themselves, within ``two_stage.BOOTSTRAP_BUDGET`` evaluations."""
    from app.services import two_stage

    top = [n for n, score, _ in res.order if score is not None][:two_stage.BOOTSTRAP_TOP]
    if len(top) < 2 or not plan.spec.bootstrap:
        return None
    keep = set(top)
    sub = ScoreTable(top)
    for c in st.table.columns:
        sub.add_column(c, higher_is_better=st.table.higher_is_better[c])
        sub.params[c] = dict(st.table.params.get(c, {}))
        for n in top:
            v = st.table.value(c, n)
            if v is not None:
                sub.set(c, n, v, st.table.notes[c].get(n))
            elif n in st.table.errors[c]:
                sub.fail(c, n, st.table.errors[c][n])
            elif n in st.table.unavailable[c]:
                sub.mark_unavailable(c, n, st.table.unavailable[c][n])
    sub_prior = None if prior is None else {n: v for n, v in prior.items() if n in keep}
    try:
        sub_res = combine(sub, _weights(plan.spec), sub_prior)
    except RankingFailed:
        return None
    sub_cs = CandidateSet([c for c in cs.cands if c.source in keep], cs.y, cs.X_target)
    boot = _bootstrap(ctx, plan, sub_cs, ScoredTable(sub, st.details), sub_res, sub_prior,
                      budget=two_stage.BOOTSTRAP_BUDGET)
    if boot is not None:
        boot.warnings.append(f"two-stage ranking: the bootstrap re-ranks the top {len(top)} exactly scored sources "
                             "among themselves (their z-scores taken over those sources)")
    return boot


# ---------------------------------------------------------------------- uncertainty
def _bootstrap(ctx: Context, plan: Plan, cs: CandidateSet, st: ScoredTable, res: Combined,
               prior: dict[str, float] | None, budget: int = BOOTSTRAP_BUDGET,
               progress: ProgressFn = no_progress) -> Bootstrap | None:
    """The library's bootstrap (``estimators.uncertainty``) over the target's examples, re-scoring
    from the candidates' inputs with the settings each column used (fallbacks included): models
    from their features / probabilities, tasks from the target mapped through each ESM (the
    ``esm_*`` values are the base estimators on the mapped features); domain divergences and
    ``static`` are held at their values. ``B`` is lowered to fit ``budget`` evaluations and
    ``BOOTSTRAP_SECONDS`` of re-scoring (estimated from the cells' point-score times). Each cell's
    draws are cached in the score table (estimator ``bootstrap:<name>``, keyed by the cell's
    parameters + B + seed, the draws in its params), so a repeated ranking re-computes nothing.
    N-LEEP's draws resample the LEEP of the mixture posteriors its point score fitted (kept on the
    candidate), so the mixture is fitted once per ranking. ``progress`` gets one message per cell."""
    B = plan.spec.bootstrap
    if not B or _task_type(plan.ds) != "classification":  # intervals for class-label targets only (for now)
        return None
    table = st.table
    cols = [c for c in table.columns if c not in res.skipped]
    # the point-score seconds of every scored cell; a resample costs about what the point scores
    # did: the median cell (robust to a cell that also paid for starting the worker processes) x cells
    cell_s = [st.cell_seconds.get((cand, c), 0.0) for c in cols for cand in table.candidates
              if table.value(c, cand) is not None]
    n_cells = len(cell_s)
    per_resample = float(np.median(cell_s)) * n_cells if cell_s else 0.0
    by_time = int(BOOTSTRAP_SECONDS // per_resample) if per_resample > 0 else B
    B = min(B, max(MIN_BOOTSTRAP, min(budget // max(n_cells, 1), by_time)))
    by_name = {c.source: c for c in cs.cands}
    ds, ver = plan.ds, scores_svc.version()
    with ctx.Session() as s:
        cache = scores_svc.lookup_target(s, ds.sha256, [BOOTSTRAP_PREFIX + c for c in cols], ver)
    new_rows: list[dict[str, Any]] = []
    done = [0]
    n_scored = sum(1 for c in cols if c in estimators.names() for cand in table.candidates
                   if table.value(c, cand) is not None)  # cells the bootstrap re-computes (or reads)

    def rescore_(*args: Any) -> np.ndarray:  # on the backend's worker processes
        return np.asarray(ctx.backend.submit_call(rescore, *args).result(), dtype=np.float64)

    def resampled(cand: Candidate, column: str, idx: np.ndarray) -> np.ndarray | None:
        info = estimators.info(column)
        kw = table.params.get(column, {})
        point_hash = scores_svc.params_hash(_score_params(kw, info, cand))
        if column == "nleep" and point_hash in cand.nleep_posteriors:  # the point score's mixture fit
            return rescore_leep(cand.nleep_posteriors[point_hash], cs.y, idx)
        if info.needs == "features" and cand.features is not None:
            # a LogME resample of a 14k x 384 target is ~0.2 s: progress after each block, and the
            # resamples are independent: blocks submitted together run in parallel on the workers
            X, B = cand.features, idx.shape[0]
            blocks = [ctx.backend.submit_call(rescore, column, X, cs.y, idx[i:i + BOOTSTRAP_BLOCK], kw)
                      for i in range(0, B, BOOTSTRAP_BLOCK)]
            parts = []
            for k, fut in enumerate(blocks):
                parts.append(np.asarray(fut.result(), dtype=np.float64))
                got = min((k + 1) * BOOTSTRAP_BLOCK, B)
                progress((done[0] - 1 + got / B) / max(n_scored, 1),
                         f"bootstrap: {column} on {cand.source}, {got}/{B} resamples (score {done[0]}/{n_scored})")
            return np.concatenate(parts)
        if info.needs == "probs" and cand.probs is not None:
            return rescore_(column, cand.probs, cs.y, idx, kw)
        if info.needs == "esm" and cand.esm_key is not None and cs.X_target is not None \
                and column[4:] in estimators.names():
            # the worker maps the target through the ESM (an n d^2 product: not in the API process)
            from app.workers.scoring import rescore_mapped

            return np.asarray(ctx.backend.submit_call(
                rescore_mapped, column[4:], str(ctx.blobs.path(cand.esm_key)), cs.X_target[cand.encoder], cs.y,
                idx, kw).result(), dtype=np.float64)
        return None  # domains: held at the value

    def values(source: str, column: str, idx: np.ndarray) -> np.ndarray:
        cand = by_name[source]
        point = table.value(column, source)
        const = np.full(idx.shape[0], np.nan if point is None else point)
        if column not in estimators.names():
            return const  # static
        info = estimators.info(column)
        params = {**_score_params(table.params.get(column, {}), info, cand), "B": idx.shape[0], "seed": 0}
        ph = scores_svc.params_hash(params)
        hit = cache.get(scores_svc.key(source, ds.sha256, cand.encoder, BOOTSTRAP_PREFIX + column, ph, ver))
        if hit is not None:  # the draws depend only on the inputs, the settings, the labels, B and the seed
            return np.array([np.nan if v is None else float(v) for v in hit.params["draws"]], dtype=np.float64)
        done[0] += 1
        progress((done[0] - 1) / max(n_scored, 1), f"bootstrap: {column} on {source}, B = {idx.shape[0]} "
                                                   f"(score {done[0]}/{n_scored})")
        t1 = time.perf_counter()
        draws = resampled(cand, column, idx)
        if draws is None:
            return const
        finite = draws[np.isfinite(draws)]
        new_rows.append(dict(source=source, source_kind=cand.kind, target_sha256=ds.sha256, encoder=cand.encoder,
                             estimator=BOOTSTRAP_PREFIX + column, params_hash=ph,
                             params={**params, "draws": [float(v) if np.isfinite(v) else None for v in draws]},
                             version=ver, value=float(finite.mean()) if finite.size else 0.0, n=ds.n_examples,
                             seconds=time.perf_counter() - t1))
        return draws

    boot = bootstrap(table, res, cs.y, values, weights=_weights(plan.spec), prior=prior, B=B, seed=0)
    for c in cs.cands:
        c.esm = None
        c.nleep_posteriors.clear()
    scores_svc.store_many(ctx, new_rows)
    if B < plan.spec.bootstrap:
        boot.warnings.append(f"B lowered from {plan.spec.bootstrap} to {B} to bound the cost "
                             f"({n_cells} scores to re-compute per resample, ~{per_resample:.2f} s)")
    return boot


def rescore_leep(P: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """LEEP of the posteriors ``P`` on each resample ``idx[b]``: ``rescore("nleep", ...)``'s draws
    from a mixture already fitted (it fits this mixture and does exactly this)."""
    from estimators.leep import leep_resamples

    y = np.asarray(y)
    return leep_resamples(P, y, int(np.unique(y).shape[0]), idx)


# ---------------------------------------------------------------------- combination and response
def _weights(spec: RankingSpec) -> dict[str, float]:
    return dict(DEFAULT_COLUMN_WEIGHTS) if spec.estimators is None else default_weights(True)


def _prior_for(ctx: Context, plan: Plan, sources: list[str]
               ) -> tuple[dict[str, float] | None, dict[str, Any], dict[str, Any] | None]:
    """The observed-results prior (default requests, or ``use_feedback``; ``None`` where it
    cannot change the order, see ``app.services.prior``), this target's own observations
    ``{source: {metric: value}}`` and the prior's evidence."""
    spec = plan.spec
    use = spec.use_feedback if spec.use_feedback is not None else spec.estimators is None
    if not use:
        return None, {}, None
    prior, evidence, own = feedback_prior(ctx, plan.ds, sources, spec.owner)
    return prior, own, evidence


def shape_response(plan: Plan, cs: CandidateSet, st: ScoredTable, res: Combined, own: dict[str, Any],
                   seconds: float, boot: Bootstrap | None = None) -> dict[str, Any]:
    """The ranking's JSON: one item per candidate (best first) with its raw scores, their
    details (cached, fallback, error, skipped) and the combined score."""
    spec, ds, names, table = plan.spec, plan.ds, plan.names, st.table
    by_name = {c.source: c for c in cs.cands}
    ranking = []
    for rank, (src, score, _z) in enumerate(res.order, 1):
        cand = by_name[src]
        item: dict[str, Any] = {"source": src, "kind": cand.kind, "rank": rank, "score": score,
                                "scores": {est: table.value(est, src) for est in names},
                                "details": st.details.get(src, {})}
        if cand.kind == "task":
            item["has_esm"] = cand.esm_key is not None
            item["source_info"] = cand.meta
        elif cand.meta:
            item["model_info"] = cand.meta
        if "static" in table.columns and (v := table.value("static", src)) is not None:
            item["static"] = v
        if src in res.prior:
            item["prior"] = res.prior[src]
        if src in own:
            item["observed"] = own[src]
        if boot is not None:
            item.update(boot.for_candidate(src))
        if src in res.unscored:
            zero = [c for c, w in res.weights.items() if w == 0 and table.columns.count(c)
                    and table.value(c, src) is not None]
            item["note"] = (f"not scored ({res.unscored[src]}): placed after the scored candidates"
                            + (f", ordered by {', '.join(zero)}" if zero else ""))
        ranking.append(item)
    errors = [f"{est} on {src}: {why}" for est in names for src, why in table.errors.get(est, {}).items()]
    result = {
        "target": {"id": ds.id, "name": ds.name, "sha256": ds.sha256, "n_examples": ds.n_examples,
                   "n_classes": ds.n_classes, "kind": ds.kind, "task_type": _task_type(ds),
                   "modality": getattr(ds, "modality", None)},
        "candidates": spec.candidates,
        "estimators": names,
        "combine": {"method": "weighted mean of per-estimator z-scores across candidates "
                              "(lower-is-better estimators negated); see estimators.ranking.combine",
                    "weights": res.weights},
        "skipped": res.skipped,
        "notes": res.notes,
        "n_candidates": len(ranking),
        "ranking": ranking[: spec.top_k],
        "computed": st.computed,
        "cached": st.cached,
        "errors": errors[:20],
        "seconds": round(seconds, 4),
    }
    if cs.prefilter is not None:
        result["prefilter"] = cs.prefilter
    if boot is not None:
        result["uncertainty"] = boot.summary()
    if spec.candidates == "tasks":  # which base encoder(s) embedded the target, with their sources
        result["base_encoders"] = {b: sum(1 for c in cs.cands if c.encoder == b)
                                   for b in sorted({c.encoder for c in cs.cands})}
    return result


def _scoring_threads(spec: RankingSpec) -> contextlib.AbstractContextManager[Any]:
    """A models ranking scores (LogME's Gram matrices, N-LEEP's mixture, the bootstrap's
    resamples) with one BLAS thread: many mid-sized BLAS calls, where a second thread buys little
    on a quiet machine and, on a busy one, spin-waits (measured: 100 LogME resamples of a
    14,000 x 384 target 7x slower with 2 OpenBLAS threads than with 1 at load average 8)."""
    if spec.candidates != "models":
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    limits: contextlib.AbstractContextManager[Any] = threadpool_limits(limits=1, user_api="blas")
    return limits


def compute(ctx: Context, spec: RankingSpec, progress: ProgressFn | None = None, *,
            plan: Plan | None = None) -> dict[str, Any]:
    """Build the candidates, score them through the cache, combine (``estimators.ranking.combine``)
    and shape the response. ``Invalid`` (422) when no estimator produced a value."""
    t0 = time.perf_counter()
    report = progress or no_progress
    plan = plan or _validate(ctx, spec)
    cs = build_candidates(ctx, plan, report)
    fs, full = None, cs
    if _two_stage(ctx, plan) and cs.X_target is not None and ctx.settings.base_encoder in cs.X_target:
        from app.services import two_stage

        def params_of(est: str, c: Candidate) -> dict[str, Any]:
            return _score_params({}, estimators.info(est), c)

        report = _monotone(report)  # the exact stage's scoring reports from 0.6 again: held at the first stage's end
        fs = two_stage.first_stage(ctx, plan.ds, cs.cands, cs.X_target[ctx.settings.base_encoder], cs.y,
                                   params_of, scaled(report, 0.6, 0.1))
        exact = fs.exact
        cs = CandidateSet([c for c in cs.cands if c.source in exact], cs.y, cs.X_target, cs.prefilter)
    with _scoring_threads(spec):
        st = score_table(ctx, plan, cs, report)
        prior, own, evidence = _prior_for(ctx, plan, [c.source for c in cs.cands])
        try:
            res = combine(st.table, _weights(plan.spec), prior)
            if fs is not None:
                res = two_stage.recombine(st.table, res, fs)
        except RankingFailed as exc:
            raise Invalid(str(exc)) from None
        t1 = time.perf_counter()
        if fs is None:
            scored = (MODELS_EXTRACTION + MODELS_SCORING) if spec.candidates == "models" else 0.9
            boot = _bootstrap(ctx, plan, cs, st, res, prior, progress=scaled(report, scored, 0.99 - scored))
        else:
            boot = _bootstrap_top(ctx, plan, cs, st, res, prior)
        boot_s = time.perf_counter() - t1
    for c in cs.cands:  # the candidates' arrays are no longer needed: freed before the response is shaped
        c.features = c.probs = c.esm = None
        c.nleep_posteriors.clear()
    report(1.0, "ranking done")
    result = shape_response(plan, cs, st, res, own, time.perf_counter() - t0, boot)
    result["timings"] = {**cs.timings, "scoring_s": st.seconds, "bootstrap_s": round(boot_s, 3)}
    if fs is not None:
        _two_stage_response(result, plan, full, fs)
    if evidence is not None:  # the feedback prior: applied or not, and on what evidence
        result["prior"] = evidence
        for item in result["ranking"] if evidence["applied"] else ():
            if item["source"] in evidence["unobserved"]:
                item["prior"] = None
                item["prior_note"] = f"no observed result: {evidence['unobserved_policy']}"
    log.info("ranking of %s (%s, %s): %d computed, %d cached in %.2fs", plan.ds.id, spec.candidates,
             ",".join(plan.names), st.computed, st.cached, result["seconds"])
    return result


# ---------------------------------------------------------------------- requests
def ranking_dict(r: Ranking, job: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {"id": r.id, "status": r.status, "target": r.target_id, "candidates": r.candidates,
           "request": r.request, "job": r.job_id,
           "progress": 1.0 if r.status == RankingStatus.DONE else (job or {}).get("progress", 0.0),
           "created_at": iso(r.created_at)}
    if r.status == RankingStatus.DONE and r.result:
        out.update({k: v for k, v in r.result.items() if k not in ("candidates",)})
    if r.status == RankingStatus.FAILED:
        out["error"] = r.error
    if job is not None and r.status != RankingStatus.DONE:
        out["message"] = job.get("message")
    return out


def _finish(ctx: Context, ranking_id: str, result: dict[str, Any]) -> None:
    with ctx.Session.begin() as s:
        r = s.get(Ranking, ranking_id)
        if r is None:  # deleted meanwhile: nothing to record
            return
        r.status, r.result, r.finished_at = RankingStatus.DONE, result, utcnow()


def _fail(ctx: Context, ranking_id: str, error: str) -> None:
    with ctx.Session.begin() as s:
        r = s.get(Ranking, ranking_id)
        if r is not None:
            r.status, r.error, r.finished_at = RankingStatus.FAILED, error, utcnow()


def create(ctx: Context, spec: RankingSpec, *, inline: bool = False) -> tuple[dict[str, Any], bool]:
    """Create a ranking. Returns ``(body, done)``: done -> 200 with the ranking, else 202 + job.

    The request is validated once. A synchronous ranking that cannot be computed (no estimator
    produced a value) raises ``Invalid`` (422); a queued one ends ``failed`` with the reason.
    ``inline=True`` (the CLI) computes in the caller's thread even when a job is needed."""
    from app.services import ranking_memo  # the same request on the same state: the same ranking

    remembered = ranking_memo.lookup(ctx, ranking_memo.fingerprint(ctx, spec.as_dict(), spec.target, spec.owner))
    if remembered is not None:
        return remembered, True
    plan = _validate(ctx, spec)
    if not needs_job(ctx, plan):
        result = compute(ctx, spec, plan=plan)
        try:
            with ctx.Session.begin() as s:
                r = Ranking(owner=spec.owner or DEFAULT_OWNER, target_id=spec.target, candidates=spec.candidates,
                            request=spec.as_dict(), status=RankingStatus.DONE, result=result, finished_at=utcnow())
                s.add(r)
        except IntegrityError:  # the target was deleted meanwhile
            raise NotFound(f"dataset {spec.target!r} was deleted while it was being ranked") from None
        body = ranking_dict(r)
        ranking_memo.remember(ctx, ranking_memo.fingerprint(ctx, spec.as_dict(), spec.target, spec.owner), body)
        return body, True
    try:
        with ctx.Session.begin() as s:
            job = ctx.jobs.create(s, "ranking", message=f"queued: {spec.candidates} ranking of {spec.target}",
                                  owner=spec.owner or DEFAULT_OWNER)
            r = Ranking(owner=spec.owner or DEFAULT_OWNER, target_id=spec.target, candidates=spec.candidates,
                        request=spec.as_dict(), status=RankingStatus.QUEUED, job_id=job.id)
            s.add(r)
            s.flush()
            ranking_id, job_id = r.id, job.id
    except IntegrityError:  # the target was deleted meanwhile
        raise NotFound(f"dataset {spec.target!r} was deleted while it was being ranked") from None

    def run(progress: ProgressFn) -> dict[str, Any]:
        with ctx.Session.begin() as s:
            row = s.get(Ranking, ranking_id)
            if row is not None:
                row.status = RankingStatus.RUNNING
        result = compute(ctx, spec, progress, plan=plan)
        _finish(ctx, ranking_id, result)
        if "two_stage" in result:  # a big catalogue: the same request on the state it left behind is answered
            # from memory (no new row, no job; re-reading every source's cached first stage is not web speed)
            ranking_memo.remember(ctx, ranking_memo.fingerprint(ctx, spec.as_dict(), spec.target, spec.owner),
                                  get(ctx, ranking_id))
        return {"ranking": ranking_id, "computed": result["computed"], "cached": result["cached"]}

    on_error = lambda err: _fail(ctx, ranking_id, err)  # noqa: E731
    if inline:
        ctx.jobs.run_inline(job_id, run, on_error)
        return get(ctx, ranking_id), True
    ctx.jobs.submit(job_id, run, on_error)
    return {"id": ranking_id, "status": RankingStatus.QUEUED, "job": job_id, "progress": 0.0}, False


def get(ctx: Context, ranking_id: str, owner: str | None = None) -> dict[str, Any]:
    """The ranking, if ``owner`` made it (None: internal, any)."""
    with ctx.Session() as s:
        r = s.get(Ranking, ranking_id)
        if r is None or (owner is not None and r.owner != owner):
            raise NotFound(f"no ranking with id {ranking_id!r}")
    job = ctx.jobs.get(r.job_id) if r.job_id and r.status != RankingStatus.DONE else None
    if job is not None and job["status"] == JobStatus.FAILED and r.status != RankingStatus.FAILED:
        with ctx.Session() as s:
            r = s.get(Ranking, ranking_id) or r
    return ranking_dict(r, job)
