"""The encoder interface: texts in, float32 (n, dim) features out.

Implementations live beside this file (one kind a module) and are built by
``app.encoders.registry.get_encoder(name)``. Encoders are used inside workers (local thread
pool or Ray actors), so they must not touch the database or the data dir's SQL.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from app.core.progress import ProgressFn


@dataclass(frozen=True)
class EncoderSpec:
    """A catalogue entry for an encoder (also the 'models' candidates of a ranking)."""

    name: str  # registry name, e.g. "minilm-l6"
    kind: str  # "transformers" | "model2vec" | "word-vectors" | "tfidf-svd"
    path: str = ""  # local path or hub id (kind dependent)
    dim: int | None = None
    params: int | None = None  # parameter count, for the static baseline
    licence: str = ""
    options: dict = field(default_factory=dict)


@runtime_checkable
class Encoder(Protocol):
    spec: EncoderSpec

    @property
    def dim(self) -> int: ...

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 64, progress: ProgressFn | None = None
    ) -> np.ndarray:
        """Embed ``texts`` -> float32 array (len(texts), dim). ``progress`` gets 0..1."""
        ...


def check_texts(texts: Sequence[str]) -> list[str]:
    """Validate an encoder's input at the boundary: a sequence of ``str`` -> ``list[str]``."""
    if isinstance(texts, (str, bytes)):
        raise ValueError("texts must be a sequence of strings, not a single string")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(
            f"texts must all be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}"
            f" ({len(bad)} non-string item(s))"
        )
    return texts
