"""Request bodies (pydantic). Responses are the service dicts documented in DESIGN.md."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RankingRequest(_Body):
    target: str = Field(..., max_length=64, description="dataset id (POST /v1/datasets)")
    candidates: Literal["tasks", "models"] = Field(..., description="rank source tasks or pretrained models")
    estimators: list[str] | None = Field(
        None, description="estimator names; default: logme + nleep for models (+ leep when every model "
                          "has source probabilities), esm_logme + esm_etran_lda + esm_hscore_shrinkage for "
                          "tasks (semb reported with weight 0), plus the observed-feedback prior when "
                          "feedback exists")
    top_k: int = Field(10, ge=1, le=10_000)
    prefilter_k: int | None = Field(None, ge=1, le=1_000_000, description="tasks: score only the k nearest sources (FAISS)")
    sources: list[str] | None = Field(None, max_length=10_000, description="restrict to these candidate names")
    params: dict[str, dict] = Field(default_factory=dict, description="per-estimator keyword parameters")
    use_feedback: bool | None = Field(
        None, description="combine with the observed-feedback prior (default: on for default estimators)")


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


class KeyCreate(_Body):
    owner: str = Field(..., min_length=1, max_length=255)
    scopes: list[Literal["read", "write", "admin"]] = Field(default_factory=lambda: ["read", "write"])
