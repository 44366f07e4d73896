"""The worker interface: where expensive work (feature extraction, ESM training) runs.

Two backends implement it: ``local`` (the embedded default: encoders on a bounded thread pool in
the API process, CPU-heavy numerics in a small pool of worker processes) and ``ray`` (actors on a
Ray cluster, GPU when available). Workers compute and return
arrays; the *service* writes them to the content-addressed store and SQL, so a worker never
needs database credentials.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.core.progress import ProgressFn
from app.encoders.base import EncoderSpec
from app.training.config import EsmTrainConfig

_DEFAULTS = EsmTrainConfig()


@dataclass
class EsmTrainRequest:
    """Fine-tune ``base_encoder`` on (texts, labels), then fit the embedding-space map."""

    base_encoder: str  # encoder registry name (must be kind "transformers")
    texts: Sequence[str]
    labels: Sequence[int]
    # the fine-tuning settings: names and defaults from app.training.config.EsmTrainConfig
    epochs: int = _DEFAULTS.epochs
    learning_rate: float = _DEFAULTS.learning_rate
    max_length: int = _DEFAULTS.max_length
    batch_size: int = _DEFAULTS.batch_size
    train_layers: str = _DEFAULTS.train_layers
    seed: int = _DEFAULTS.seed
    map_fit: str = _DEFAULTS.map_fit
    options: dict = field(default_factory=dict)  # app.training.config.OPTION_KEYS


@dataclass
class EsmTrainResult:
    weight: np.ndarray  # (d, d) float32: maps base -> fine-tuned embedding
    bias: np.ndarray  # (d,) float32
    base_embeddings: np.ndarray  # (n, d) float32, base encoder on the source texts
    metrics: dict = field(default_factory=dict)  # e.g. train loss, map R^2, seconds


class WorkerBackend(abc.ABC):
    name: str = "abstract"

    @abc.abstractmethod
    def submit_embed(
        self, encoder: str | EncoderSpec, texts: Sequence[str], *, progress: ProgressFn | None = None
    ) -> Future:
        """Embed ``texts`` with ``encoder`` (a registry name, or a user model's spec); the Future yields
        float32 (n, dim)."""

    @abc.abstractmethod
    def submit_train_esm(self, request: EsmTrainRequest, *, progress: ProgressFn | None = None) -> Future:
        """Train an ESM; the Future yields an ``EsmTrainResult``."""

    def submit_score_esms(self, request, *, progress: ProgressFn | None = None) -> Future:
        """Score one chunk of sources' ESMs on a target's statistics
        (``app.workers.scoring.EsmScoreRequest``); the Future yields float64 (k, E)."""
        raise NotImplementedError(f"the {self.name} backend does not score ESMs")

    def submit_call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run a CPU-heavy numeric function (``fn`` a module-level function, its inputs and result
        picklable: e.g. ``estimators.score``) away from request handling where the backend can;
        the Future yields its result or raises its exception. Default: in the calling thread (the
        caller is already a job's thread), the Future already done."""
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - handed to the caller through the Future
            fut.set_exception(exc)
        return fut

    def describe(self) -> dict:
        """Backend facts for /healthz-style reporting (name, workers, devices)."""
        return {"backend": self.name}

    def shutdown(self) -> None:  # noqa: B027 - an optional hook
        """Release the backend's resources (default: nothing to release)."""


class Cancelled(Exception):
    """Raised from a progress callback when the job was cancelled; workers let it propagate."""
