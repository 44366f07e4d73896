"""``model2vec`` encoder kind: a static (token-embedding lookup + mean) model.

Either ``spec.path`` is a saved model2vec model (a directory whose ``config.json`` has
``"model_type": "model2vec"``) and it is loaded as is, or ``spec.path`` is a transformers
teacher (e.g. the packaged all-MiniLM-L6-v2) and a static model is distilled from it with
``model2vec.distill.distill(teacher, pca_dims=options["pca_dims"])`` on first use
(offline, once per model and ``pca_dims``) and cached under
``<cache_dir>/models/<name>-pca<dims>``. ``cache_dir`` is ``options["cache_dir"]``, else the
``TRANSFERRANK_DATA_DIR`` environment variable, else the per-user cache dir (the service's
default data dir). The cache is written to a temporary directory and renamed into place, so a
crash or a concurrent process never leaves a half-written model behind.

Cost: encoding is a table lookup and a mean per text, thousands of texts per second on a CPU.
Output: float32, L2-normalised (model2vec's ``normalize`` setting from distillation).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.core.config import Settings
from app.encoders.base import EncoderSpec, ProgressFn, check_texts

DEFAULT_PCA_DIMS = 256
_distill_lock = threading.Lock()


def default_cache_dir() -> Path:
    return Settings.from_env().data_dir


def _is_static_model_dir(path: Path) -> bool:
    cfg = path / "config.json"
    if not (cfg.is_file() and (path / "model.safetensors").is_file()):
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "model2vec"
    except (OSError, ValueError):
        return False


def distilled_model_dir(spec: EncoderSpec, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the distilled model of ``spec`` is (or will be) cached."""
    root = Path(cache_dir or spec.options.get("cache_dir") or default_cache_dir())
    pca = int(spec.options.get("pca_dims", DEFAULT_PCA_DIMS))
    return root / "models" / f"{spec.name}-pca{pca}"


def ensure_distilled(spec: EncoderSpec, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a directory holding a saved static model for ``spec``, distilling it if needed."""
    src = Path(spec.path).expanduser() if spec.path else None
    if src is not None and _is_static_model_dir(src):
        return src
    if src is None or not src.is_dir():
        raise ValueError(
            f"encoder {spec.name!r}: model2vec needs a saved static model or a local teacher "
            f"model directory to distill from; {spec.path!r} is neither"
        )
    target = distilled_model_dir(spec, cache_dir)
    with _distill_lock:
        if _is_static_model_dir(target):
            return target
        try:
            from model2vec.distill import distill
        except ImportError as exc:
            raise ValueError(
                "distilling a model2vec encoder needs model2vec's distill extra "
                "(pip install 'model2vec[distill]' or 'skeletoken')"
            ) from exc
        pca = int(spec.options.get("pca_dims", DEFAULT_PCA_DIMS))
        model = distill(model_name=str(src), pca_dims=pca)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            model.save_pretrained(str(tmp))
            try:
                os.replace(tmp, target)
            except OSError:  # another process won the race: keep its copy
                if not _is_static_model_dir(target):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


class Model2VecEncoder:
    """Static token embeddings, mean pooled (model2vec)."""

    def __init__(self, spec: EncoderSpec, cache_dir: str | os.PathLike | None = None):
        from model2vec import StaticModel

        self.spec = spec
        self.model_dir = ensure_distilled(spec, cache_dir)
        try:
            self.model = StaticModel.from_pretrained(str(self.model_dir))
        except Exception as exc:
            raise ValueError(
                f"cannot load model2vec model from {self.model_dir} for encoder {spec.name!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._dim = int(self.model.dim)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def n_params(self) -> int:
        return int(np.prod(self.model.embedding.shape))

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 1024, progress: ProgressFn | None = None
    ) -> np.ndarray:
        texts = check_texts(texts)
        n = len(texts)
        out = np.empty((n, self._dim), dtype=np.float32)
        chunk = max(int(batch_size), 1) * 4  # progress granularity; model2vec batches inside
        for start in range(0, n, chunk):
            part = texts[start : start + chunk]
            out[start : start + len(part)] = self.model.encode(
                part, batch_size=max(int(batch_size), 1), show_progress_bar=False
            )
            if progress:
                progress(min(start + chunk, n) / n)
        if n == 0 and progress:
            progress(1.0)
        return out
