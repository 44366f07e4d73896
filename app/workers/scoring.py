"""Worker-side ESM scoring: one chunk of a tasks ranking's sources from the target statistics.

The service computes the target's sufficient statistics once (``estimators.esm_stats``) and
stores them as a blob; each chunk names that blob and the sources' ESM blobs (paths in the
shared blob store, so nothing large crosses the wire to a Ray actor). The worker reads them,
scores the chunk with ``estimators.esm_stats.score_many`` (torch float64 on the worker's GPU
when it has one, else numpy) and returns the (k, E) scores. The column ``esm_logme_lowrank``
(``FIRST_STAGE``) is the two-stage ranking's cheap first stage, ``estimators.esm_stats.logme_lowrank``
with ``options["rank"]`` (default 64): not an exact score.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["EsmScoreRequest", "score_esm_chunk", "pick_device", "load_target_stats", "save_target_stats",
           "FIRST_STAGE", "rescore_mapped"]

#: The first-stage column of a two-stage tasks ranking (``estimators.esm_stats.logme_lowrank``).
FIRST_STAGE = "esm_logme_lowrank"


@dataclass
class EsmScoreRequest:
    """Score ``esm_paths`` (saved ESMs) on the target statistics saved at ``stats_path``."""

    stats_path: str
    esm_paths: Sequence[str]
    estimators: Sequence[str]
    device: str = "auto"  # "auto" (GPU when present) | "cpu" (numpy) | a torch device name
    options: dict = field(default_factory=dict)


def pick_device(device: str = "auto") -> str | None:
    """``score_many``'s device: None (numpy) unless a GPU is asked for or, with "auto", present."""
    if device in (None, "cpu", "numpy"):
        return None
    if device == "auto":
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else None
        except ImportError:  # pragma: no cover - torch is a service dependency
            return None
    return str(device)


_STATS: dict[str, object] = {}  # per worker process: statistics by blob path (a few, small)


def load_target_stats(path: str):
    """``TargetStats`` from an ``.npz`` blob (no pickle); the last few kept per process."""
    from estimators.esm_stats import TargetStats

    st = _STATS.get(path)
    if st is None:
        with np.load(Path(path), allow_pickle=False) as z:
            st = TargetStats.from_arrays({k: z[k] for k in z.files})
        if len(_STATS) >= 4:
            _STATS.pop(next(iter(_STATS)))
        _STATS[path] = st
    return st


def save_target_stats(blob_root: str, X, y) -> str:
    """``TargetStats`` of the target (X, y) written as an ``.npz`` blob to the blob store at
    ``blob_root`` (content-addressed: the same statistics, the same key); returns the key."""
    import io

    from app.storage.blobs import BlobStore
    from estimators.esm_stats import TargetStats

    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **TargetStats.from_data(X, y).to_arrays())
    return BlobStore(blob_root).put_bytes(buf.getvalue(), "npz")


def score_esm_chunk(request: EsmScoreRequest, progress=None) -> np.ndarray:
    """Scores (k, E) of the request's ESMs, rows in ``esm_paths`` order, columns in
    ``estimators`` order; NaN where an estimator is undefined for a source."""
    from estimators.esm_stats import score_many, stack_saved

    stats = load_target_stats(request.stats_path)
    cols = list(request.estimators)
    exact = [e for e in cols if e != FIRST_STAGE]
    # The stored canonical (triangular) maps when LogME or the H-score are asked for: the same
    # scores, a third of their per-source products (``estimators.esm_stats.canonical_maps``).
    W, b = stack_saved(request.esm_paths, canonical=bool({"esm_logme", "esm_hscore_shrinkage"} & set(exact)))
    report = None if progress is None else (lambda done, total: progress(done / total))
    device = pick_device(request.device)
    out = np.full((W.shape[0], len(cols)), np.nan)
    if exact:
        vals = score_many(stats, W, exact, bias=b, device=device, progress=report)
        for j, e in enumerate(exact):
            out[:, cols.index(e)] = vals[:, j]
    if FIRST_STAGE in cols:
        from estimators.esm_stats import logme_lowrank

        out[:, cols.index(FIRST_STAGE)] = logme_lowrank(stats, W, rank=int(request.options.get("rank", 64)),
                                                        bias=b, device=device)
    return out


def rescore_mapped(estimator: str, esm_path: str, X_base: np.ndarray, y: np.ndarray, idx: np.ndarray,
                   params: dict) -> np.ndarray:
    """``estimators.uncertainty.rescore`` of the target ``X_base`` mapped through the ESM saved at
    ``esm_path``: the bootstrap resamples of an ``esm_<estimator>`` column, mapped and scored on
    the worker (the n x d x d map product stays out of the API process)."""
    from estimators.esm import EmbeddingSpaceMap
    from estimators.uncertainty import rescore

    return rescore(estimator, EmbeddingSpaceMap.load(esm_path).transform(X_base), y, idx, params)
