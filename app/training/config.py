"""The one definition of an ESM training job's settings and their defaults.

An ESM job fine-tunes the base encoder on a source, embeds the source texts with both encoders
and fits the embedding-space map (``estimators.esm.EmbeddingSpaceMap``). Its settings come in
two groups:

* ``EsmTrainConfig`` -- the fine-tuning settings a user may set per source
  (``POST /v1/sources {"train": {...}}``); ``EsmTrainRequest`` carries them as its fields and
  ``TRAIN_FIELDS`` names them;
* ``request.options`` -- advanced settings: the map fit (``esm_<arg>``, defaults read from
  ``EmbeddingSpaceMap.fit``'s signature, so there is no second copy of them), the head's
  learning rate and the embedding settings (``OTHER_OPTIONS``).

Light on purpose: no torch import.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class EsmTrainConfig:
    """Fine-tuning settings of an ESM job, with their defaults."""

    epochs: int = 1
    learning_rate: float = 5e-5
    max_length: int = 128
    batch_size: int = 32
    train_layers: str = "all"  # "all" | "top-N" | "head"
    seed: int = 0
    map_fit: str = "adam"  # "adam" (the ESM paper's) | "lstsq"


#: The per-source training settings (the fields of ``EsmTrainConfig``).
TRAIN_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(EsmTrainConfig))
#: Defaults of ``EsmTrainConfig``, by name.
TRAIN_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(EsmTrainConfig)}


def _esm_fit_defaults() -> dict[str, Any]:
    from estimators.esm import EmbeddingSpaceMap

    params = inspect.signature(EmbeddingSpaceMap.fit).parameters
    return {f"esm_{k}": params[k].default for k in ("epochs", "lr", "batch_size", "weight_decay")}


#: The map-fit settings accepted in ``request.options`` (prefixed ``esm_``) and their defaults.
ESM_FIT_DEFAULTS: dict[str, Any] = _esm_fit_defaults()
#: The other accepted ``request.options`` keys (fine-tuning extras, embedding, placement).
OTHER_OPTIONS = frozenset({"head_lr", "weight_decay", "warmup", "embed_max_length", "embed_batch_size",
                           "base_path", "device"})
#: Every accepted ``request.options`` key.
OPTION_KEYS = frozenset(ESM_FIT_DEFAULTS) | OTHER_OPTIONS
