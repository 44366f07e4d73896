"""The worker interface: where expensive work (feature extraction, ESM training) runs.

Two backends implement it: ``local`` (bounded thread pool in the API process, the embedded
default) and ``ray`` (actors on a Ray cluster, GPU when available). Workers compute and return
arrays; the *service* writes them to the content-addressed store and SQL, so a worker never
needs database credentials.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

ProgressFn = Callable[[float], None]


@dataclass
class EsmTrainRequest:
    """Fine-tune ``base_encoder`` on (texts, labels), then fit the embedding-space map."""

    base_encoder: str  # encoder registry name (must be kind "transformers")
    texts: Sequence[str]
    labels: Sequence[int]
    epochs: int = 1
    learning_rate: float = 5e-5
    max_length: int = 128
    batch_size: int = 32
    train_layers: str = "all"  # "all" | "top-N" | "head"
    seed: int = 0
    map_fit: str = "adam"  # "adam" (paper default) | "lstsq"
    options: dict = field(default_factory=dict)


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
        self, encoder: str, texts: Sequence[str], *, progress: ProgressFn | None = None
    ) -> Future:
        """Embed ``texts`` with registry encoder ``encoder``; the Future yields float32 (n, dim)."""

    @abc.abstractmethod
    def submit_train_esm(self, request: EsmTrainRequest, *, progress: ProgressFn | None = None) -> Future:
        """Train an ESM; the Future yields an ``EsmTrainResult``."""

    def describe(self) -> dict:
        """Backend facts for /healthz-style reporting (name, workers, devices)."""
        return {"backend": self.name}

    def shutdown(self) -> None:  # noqa: B027 - an optional hook
        """Release the backend's resources (default: nothing to release)."""
