"""Request bodies and response models (pydantic): the OpenAPI schema of the REST API."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v) for v in value)
    return False


class _Body(BaseModel):
    """A request body: unknown fields and NUL characters (PostgreSQL cannot store them) are refused."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        if _has_nul(data):
            raise ValueError("text fields must not contain NUL characters")
        return data


class RankingRequest(_Body):
    target: str = Field(..., max_length=64, description="dataset id (POST /v1/datasets)")
    candidates: Literal["tasks", "models"] = Field(..., description="rank source tasks or pretrained models")
    estimators: list[str] | None = Field(
        None, description="estimator names; default: logme + nleep for models (+ leep when every model "
                          "has source probabilities), esm_logme + esm_etran_lda + esm_hscore_shrinkage for "
                          "tasks (semb reported with weight 0), plus the observed-feedback prior when "
                          "feedback exists")
    top_k: int = Field(10, ge=1, le=10_000)
    prefilter_k: int | None = Field(None, ge=1, le=1_000_000,
                                    description="tasks: score only the k nearest sources (FAISS)")
    sources: list[str] | None = Field(None, max_length=10_000, description="restrict to these candidate names")
    params: dict[str, dict] = Field(default_factory=dict, description="per-estimator keyword parameters")
    use_feedback: bool | None = Field(
        None, description="combine with the observed-feedback prior (default: on for default estimators)")
    bootstrap: int = Field(100, ge=0, le=1000, description="resamples of the target's examples for each "
                           "candidate's interval and tied_with_top (estimators.uncertainty); 0 = none")
    two_stage: bool | None = Field(
        None, description="tasks, default estimators: rank in two stages (a cheap first stage over every source, "
                          "the exact default on the best; app.services.two_stage). Default: when there are more "
                          "task candidates than TRANSFERRANK_TWO_STAGE_ABOVE; false = always exhaustive")


class TrainOptions(_Body):
    epochs: int | None = Field(None, ge=1, le=50)
    learning_rate: float | None = Field(None, gt=0, le=1)
    max_length: int | None = Field(None, ge=8, le=512)
    batch_size: int | None = Field(None, ge=1, le=1024)
    train_layers: str | None = Field(None, max_length=32, description="'all' | 'top-N' | 'head'")
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    map_fit: Literal["adam", "lstsq"] | None = None


class SourceCreate(_Body):
    dataset: str = Field(..., max_length=64, description="dataset id of an uploaded dataset")
    name: str | None = Field(None, max_length=255, description="default: the dataset's name")
    description: str = Field("", max_length=10_000)
    licence: str = Field("", max_length=200)
    train_esm: bool = Field(True, description="fine-tune the base encoder and fit an ESM (a job)")
    train: TrainOptions = Field(default_factory=TrainOptions)


class FeedbackCreate(_Body):
    source: str = Field(..., max_length=255, description="source task or model name")
    target: str = Field(..., max_length=64, description="dataset id")
    metric: str = Field(..., min_length=1, max_length=64, description="e.g. accuracy, f1")
    value: float
    higher_is_better: bool = True
    note: str | None = Field(None, max_length=10_000)


Scope = Literal["read", "write", "admin"]


def _default_scopes() -> list[Scope]:
    return ["read", "write"]


class KeyCreate(_Body):
    owner: str = Field(..., min_length=1, max_length=255)
    scopes: list[Scope] = Field(default_factory=_default_scopes)


# ====================================================================== responses
# Every 2xx body is one of these ``*Public`` models. They name the fields the service promises;
# ``extra="allow"`` keeps fields added later (and the open-ended parts of a ranking) in the body.


class _Public(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorPublic(BaseModel):
    """Every 4xx body: one sentence a person can act on."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "no dataset with id 'abc'"}]})
    detail: str = Field(..., description="what went wrong and how to fix it")


class HealthPublic(_Public):
    status: Literal["ok"] = "ok"


class DatasetPublic(_Public):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "id": "3f2a9c1e0b7d4e5f8a6b1c2d3e4f5a6b", "name": "reviews", "sha256": "9b71d2…", "n_examples": 400,
        "n_classes": 2, "kind": "text", "classes": ["negative", "positive"], "format": "csv",
        "feature_sets": ["minilm-l6"], "created_at": "2026-01-01T00:00:00+00:00"}]})
    id: str
    name: str
    owner: str | None = Field(None, description="the owner (an API key's owner; 'public': the catalogue every "
                                                "caller reads; 'local': open mode)")
    sha256: str
    n_examples: int
    n_classes: int | None = None
    kind: str = Field(..., description="'text' (texts + labels) or 'features' (an NPZ of features)")
    classes: list[str] = Field(default_factory=list, description="class names (the first 50)")
    format: str | None = None
    feature_sets: list[str] = Field(default_factory=list, description="encoders with stored features")
    created_at: str | None = None


class DatasetListPublic(_Public):
    datasets: list[DatasetPublic]


class DatasetDeletedPublic(_Public):
    id: str
    deleted: bool
    blobs_removed: int
    scores_removed: int


class SourcePublic(_Public):
    """A source task of the catalogue (a labelled dataset, usually with an ESM)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "id": 1, "name": "wordnet_supersense", "kind": "task", "dataset_id": "3f2a9c1e…", "description": "",
        "licence": "WordNet 3.0 licence", "origin": "demo", "status": "ready", "base_encoder": "minilm-l6",
        "has_esm": True, "esm": {"fit": "adam"}, "job": None, "error": None,
        "created_at": "2026-01-01T00:00:00+00:00", "n_examples": 600, "n_classes": 25}]})
    id: int
    name: str
    kind: Literal["task"] = "task"
    owner: str | None = Field(None, description="the owner (an API key's owner; 'public': the catalogue every "
                                                "caller reads; 'local': open mode)")
    dataset_id: str | None = None
    description: str | None = None
    licence: str | None = None
    origin: str | None = None
    status: str = Field(..., description="pending | training | ready | failed")
    base_encoder: str | None = None
    has_esm: bool = False
    esm: dict[str, Any] = Field(default_factory=dict, description="how the ESM was fitted")
    job: str | None = Field(None, description="the training job, if any")
    error: str | None = None
    created_at: str | None = None
    n_examples: int | None = None
    n_classes: int | None = None
    sha256: str | None = None


class ModelPublic(_Public):
    """A pretrained model candidate (an encoder of the registry)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "name": "minilm-l6", "kind": "model", "encoder_kind": "transformers", "dim": 384, "params": 22700000,
        "licence": "Apache-2.0", "enabled": True}]})
    name: str
    kind: Literal["model"] = "model"
    owner: str | None = Field(None, description="the owner (an API key's owner; 'public': the catalogue every "
                                                "caller reads; 'local': open mode)")
    encoder_kind: str | None = None
    dim: int | None = None
    params: int | None = None
    licence: str | None = None
    enabled: bool = True


class SourceCataloguePublic(_Public):
    tasks: list[SourcePublic]
    models: list[ModelPublic]
    base_encoder: str


class SourceCreatedPublic(_Public):
    source: SourcePublic
    job: str | None = Field(None, description="the ESM training job when status is 'queued'")
    status: Literal["queued", "ready"]


class SourceDeletedPublic(_Public):
    name: str
    deleted: bool
    scores_removed: int


class TargetPublic(_Public):
    id: str
    name: str | None = None
    sha256: str | None = None
    n_examples: int | None = None
    n_classes: int | None = None
    kind: str | None = None


class RankedCandidatePublic(_Public):
    """One candidate of a ranking; estimator-specific details ride along as extra fields."""

    source: str = Field(..., description="source task or model name")
    rank: int = Field(..., ge=1, description="1 = most promising")
    score: float | None = Field(None, description="combined score (None: no weighted estimator scored it)")
    scores: dict[str, float | None] = Field(default_factory=dict, description="raw value per estimator")
    kind: str | None = Field(None, description="'task' or 'model'")
    details: dict[str, Any] = Field(default_factory=dict, description="per estimator: cached, seconds, "
                                    "fallback, skipped or error")
    interval: list[float] | None = Field(None, description="95% bootstrap interval of the combined score")
    p_top: float | None = Field(None, description="share of bootstrap resamples where it ranks first")
    tied_with_top: bool | None = Field(None, description="statistically indistinguishable from the top "
                                       "(bootstrap of the combined score)")
    tied_by: list[str] | None = Field(None, description="tests under which it is indistinguishable from the "
                                      "top: 'combined' (= tied_with_top) and each member estimator that ranks "
                                      "it first or whose own bootstrap cannot separate it from its own top")


class RankingPublic(_Public):
    """A ranking request and, once ``status`` is ``done``, its result."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "id": "7c0d…", "status": "done", "progress": 1.0, "candidates": "models", "job": None,
        "target": {"id": "3f2a…", "name": "reviews", "n_examples": 400, "n_classes": 2, "kind": "text"},
        "estimators": ["logme", "nleep"], "computed": 8, "cached": 0,
        "ranking": [{"source": "minilm-l6", "rank": 1, "score": 0.91, "kind": "model",
                     "scores": {"logme": 0.42, "nleep": -0.61}, "details": {}}]}]})
    id: str
    status: str = Field(..., description="queued | running | done | failed | cancelled")
    progress: float = Field(0.0, ge=0.0, le=1.0)
    job: str | None = Field(None, description="the job computing it (GET /v1/jobs/{id})")
    target: str | TargetPublic | None = Field(None, description="dataset id, or a summary once done")
    candidates: str | None = None
    request: dict[str, Any] | None = None
    created_at: str | None = None
    ranking: list[RankedCandidatePublic] | None = Field(None, description="best first (status done)")
    estimators: list[str] | None = None
    computed: int | None = Field(None, description="scores computed by this request")
    cached: int | None = Field(None, description="scores served from the cache")
    errors: list[str] | None = None
    skipped: dict[str, str] | None = Field(None, description="estimators dropped for every candidate, with why")
    uncertainty: dict[str, Any] | None = Field(None, description="the bootstrap: B, seed, warnings (target "
                                               "too small, candidates not separable)")
    error: str | None = Field(None, description="why the ranking failed")
    message: str | None = None


class JobPublic(_Public):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "id": "5e1f…", "kind": "ranking", "status": "running", "progress": 0.4, "message": "embedding the target",
        "error": None, "result": {}, "created_at": "2026-01-01T00:00:00+00:00",
        "started_at": "2026-01-01T00:00:01+00:00", "finished_at": None}]})
    id: str
    kind: str
    status: str = Field(..., description="queued | running | done | failed | cancelled")
    progress: float = Field(0.0, ge=0.0, le=1.0)
    message: str | None = None
    error: str | None = None
    result: dict[str, Any] = Field(default_factory=dict)
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


class MatrixEntryPublic(_Public):
    estimator: str | None
    source: str
    source_kind: str | None = None
    target: str | None = None
    target_name: str | None = None
    target_sha256: str | None = None
    encoder: str | None = None
    value: float | None = None
    higher_is_better: bool | None = None
    n: int | None = None
    version: str | None = None
    observed_metric: str | None = None
    observed_value: float | None = None
    score: float | None = Field(None, description="the (source, target) pair's combined z-score")
    target_label: str | None = None


class MatrixPublic(_Public):
    """The transfer matrix (``app.services.matrix``). ``layout=long``: ``entries`` (one per
    source x target x estimator, each with the pair's combined ``score``), ``matrix`` (estimator
    -> source -> target -> value), ``scores`` (target -> source -> combined score).
    ``layout=wide``: ``index`` (sources), ``columns`` (targets), ``data`` (rows of cells: the
    combined score, or the raw values of the estimator named in ``value``)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "layout": "long", "estimators": ["logme"], "sources": ["minilm-l6"], "targets": ["reviews"],
        "matrix": {"logme": {"minilm-l6": {"reviews": 0.42}}}, "scores": {"reviews": {"minilm-l6": 0.0}},
        "entries": [], "observed": [], "total": 1, "limit": None, "offset": 0}, {
        "layout": "wide", "value": "score", "index": ["minilm-l6", "glove-6b-50d"], "columns": ["reviews"],
        "data": [[1.0], [-1.0]], "total": 2, "limit": None, "offset": 0, "estimators": ["logme", "nleep"]}]})
    layout: Literal["long", "wide"] = "long"
    estimators: list[str]
    total: int | None = Field(None, description="entries (long) or sources (wide) before limit/offset")
    limit: int | None = None
    offset: int = 0
    combine: dict[str, Any] = Field(default_factory=dict, description="how the combined score is made")
    sources: list[str] | None = None
    targets: list[str] | None = None
    matrix: dict[str, dict[str, dict[str, float | None]]] | None = Field(
        None, description="long: estimator -> source -> target name -> value")
    scores: dict[str, dict[str, float | None]] | None = Field(
        None, description="long: target name -> source -> combined score")
    entries: list[MatrixEntryPublic] | None = None
    observed: list[dict[str, Any]] | None = Field(None, description="observed transfer results")
    value: str | None = Field(None, description="wide: 'score' or the estimator in the cells")
    index: list[str] | None = Field(None, description="wide: sources (rows)")
    columns: list[str] | None = Field(None, description="wide: targets (columns)")
    data: list[list[float | None]] | None = Field(None, description="wide: one row of cells per source")


class BatchRankingItemPublic(_Public):
    id: str
    target: str
    status: str


class BatchRankingPublic(_Public):
    """``POST /v1/rankings/batch``: one job for the whole batch, one ranking per target."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "id": "5e1f…", "status": "queued", "job": "5e1f…", "progress": 0.0,
        "rankings": [{"id": "7c0d…", "target": "3f2a…", "status": "queued"}]}]})
    id: str
    status: str
    job: str
    progress: float = 0.0
    rankings: list[BatchRankingItemPublic]


class FeedbackPublic(_Public):
    id: int
    source: str
    target: str
    target_sha256: str | None = None
    metric: str
    value: float
    higher_is_better: bool
    note: str | None = None
    created_at: str | None = None


class FeedbackListPublic(_Public):
    feedback: list[FeedbackPublic]


class EstimatorPublic(_Public):
    name: str
    needs: str
    higher_is_better: bool
    paper: str | None = None
    cost: str | None = None
    candidates: Literal["models", "tasks"]


class EstimatorListPublic(_Public):
    estimators: list[EstimatorPublic]
    version: str | None = None
    defaults: dict[str, list[str]] = Field(default_factory=dict, description="default estimators per candidate kind")


class KeyPublic(_Public):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "id": "k_12ab", "owner": "alice", "scopes": ["read", "write"], "active": True,
        "created_at": "2026-01-01T00:00:00+00:00", "revoked_at": None, "last_used_at": None}]})
    id: str
    owner: str
    scopes: list[str]
    active: bool
    created_at: str | None = None
    revoked_at: str | None = None
    last_used_at: str | None = None


class KeyCreatedPublic(KeyPublic):
    key: str = Field(..., description="the secret: shown once, store it now")


class KeyListPublic(_Public):
    keys: list[KeyPublic]


class InfoPublic(_Public):
    data_dir: str
    database: str
    workers: dict[str, Any]
    index: dict[str, Any]
    base_encoder: str


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each 4xx code with the ``ErrorPublic`` body and what it means."""
    meaning = {400: "bad request", 401: "an API key is required, or the key is invalid or revoked",
               403: "the key lacks the scope this call needs", 404: "not found",
               409: "conflicts with the current state (e.g. still training)",
               413: "the request body is larger than TRANSFERRANK_MAX_JSON_BYTES (an upload: "
                    "TRANSFERRANK_MAX_UPLOAD_BYTES)",
               422: "the request or its content cannot be used", 429: "too many requests"}
    return {c: {"model": ErrorPublic, "description": meaning.get(c, "error")} for c in codes}
