"""Embedding-space maps (ESMs) and ESM-LogME.

Schulte, Hamborg & Akbik, "Less is More: Parameter-Efficient Selection of Intermediate Tasks
for Transfer Learning", EMNLP 2024.

An ESM approximates the effect of fine-tuning an encoder on a source task with one linear
layer: for the source's texts, ``f_ft(x) ~= W f_base(x) + b``. To score a *target* dataset
against many sources, the target is embedded once with the base encoder, pushed through each
source's ESM, and scored with LogME (``esm_logme``); no fine-tuned encoder is needed at
selection time.

Training defaults follow the authors' reference trainer (``hfselect.ESMTrainer``): a linear
layer d->d, MSE loss (mean over all output entries), Adam(W) with learning rate 1e-3, 10
epochs, batch size 32, examples reshuffled every epoch, learning rate decayed linearly to 0
without warm-up, gradient norm clipped to 1.0, PyTorch ``nn.Linear`` initialisation. (The
reference trainer passes ``weight_decay=0.01`` to AdamW; here the default is 0.0 and the
decay, when given, is decoupled exactly as in AdamW.) ``method="lstsq"`` instead solves the
least-squares problem in closed form (see ``EmbeddingSpaceMap.fit``).

Storage never uses pickle: ``save`` writes safetensors (``.safetensors``, default) or a plain
``.npz`` (loaded with ``allow_pickle=False``); metadata (dims, method, format version, any
user metadata) is kept as strings.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._validation import check_features

__all__ = ["EmbeddingSpaceMap", "esm_logme", "esm_etran_lda", "esm_hscore_shrinkage", "map_target",
           "FORMAT", "FORMAT_VERSION"]

FORMAT = "transferrank-esm"
FORMAT_VERSION = "1"
_METHODS = ("adam", "lstsq")
_SCHEDULES = ("linear", "constant")


def _check_pair(X_base: ArrayLike, X_ft: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    X = check_features(X_base, name="X_base (base-encoder embeddings)")
    Y = check_features(X_ft, name="X_ft (fine-tuned-encoder embeddings)")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"X_base has {X.shape[0]} rows but X_ft has {Y.shape[0]}; both must embed the same texts in the same order"
        )
    return X, Y


class EmbeddingSpaceMap:
    """A linear map ``x -> W x + b`` from a base encoder's space to a fine-tuned encoder's space.

    ``weight`` has shape (d_out, d_in) and ``bias`` (d_out,) (PyTorch ``nn.Linear`` layout),
    both float64. Construct empty and ``fit``, or from known arrays.
    """

    def __init__(self, weight: ArrayLike | None = None, bias: ArrayLike | None = None, *,
                 metadata: Mapping[str, Any] | None = None) -> None:
        self.weight: np.ndarray | None = None
        self.bias: np.ndarray | None = None
        self.method: str | None = None
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.history: dict[str, list[float]] = {}
        if weight is None and bias is None:
            return
        if weight is None:
            raise ValueError("bias given without weight; pass both (or neither, then call fit)")
        W = check_features(weight, name="weight", min_samples=1)
        if bias is None:
            b = np.zeros(W.shape[0])
        else:
            b = np.asarray(bias, dtype=np.float64)
            if b.ndim != 1 or b.shape[0] != W.shape[0]:
                raise ValueError(f"bias must have shape ({W.shape[0]},) to match weight {W.shape}, got {b.shape}")
            if not np.all(np.isfinite(b)):
                raise ValueError("bias contains NaN or infinite values")
        self.weight, self.bias = W, np.ascontiguousarray(b, dtype=np.float64)
        self.method = self.metadata.get("method", "given")

    # ------------------------------------------------------------------ properties
    @property
    def is_fitted(self) -> bool:
        return self.weight is not None

    def _require_fitted(self) -> tuple[np.ndarray, np.ndarray]:
        """``(weight, bias)``, or ``ValueError`` when the map is not fitted."""
        if self.weight is None or self.bias is None:
            raise ValueError("this EmbeddingSpaceMap is not fitted yet; call fit(X_base, X_ft) or load one")
        return self.weight, self.bias

    @property
    def dim_in(self) -> int:
        return int(self._require_fitted()[0].shape[1])

    @property
    def dim_out(self) -> int:
        return int(self._require_fitted()[0].shape[0])

    def __repr__(self) -> str:
        if self.weight is None:
            return "EmbeddingSpaceMap(unfitted)"
        return f"EmbeddingSpaceMap(dim_in={self.dim_in}, dim_out={self.dim_out}, method={self.method!r})"

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        X_base: ArrayLike,
        X_ft: ArrayLike,
        *,
        method: str = "adam",
        lr: float = 1e-3,
        epochs: int = 10,
        batch_size: int = 32,
        weight_decay: float = 0.0,
        seed: int | None = 0,
        schedule: str = "linear",
        clip_norm: float | None = 1.0,
        ridge: float = 1e-10,
    ) -> EmbeddingSpaceMap:
        """Fit ``W, b`` so that ``X_base @ W.T + b ~= X_ft`` (both (n, d), rows = same texts).

        ``method="adam"`` (paper default): mini-batch AdamW on the MSE, seeded (shuffling and
        initialisation), float64, vectorised per batch. ``lr`` peak learning rate, ``schedule``
        ``"linear"`` (decay to 0, as the reference) or ``"constant"``, ``clip_norm`` global
        gradient-norm clip (None = off), ``weight_decay`` decoupled (AdamW). Cost
        O(epochs * n * d_in * d_out) in epochs * ceil(n / batch_size) sequential steps, each
        touching the d_out x d_in parameters ~15 times (BLAS pinned to one thread while
        fitting, see ``_single_threaded_blas``); per-epoch mean losses in ``self.history["loss"]``.

        ``method="lstsq"``: the exact minimiser of the squared error with an intercept. With
        centred X, Y and the eigendecomposition ``Xc^T Xc = V diag(e) V^T``,
        ``W^T = V diag(1/(e + lam)) V^T Xc^T Yc`` and ``b = mean(Y) - W mean(X)``, where
        ``lam = ridge * max(e) + weight_decay * n`` and directions with
        ``e <= max(n, d) * d * eps * max(e)`` (numerically null, e.g. when n <= d) are dropped
        (minimum-norm solution). ``ridge`` (relative, default 1e-10) only stabilises; it moves
        the fit by a relative ~``ridge * cond(Xc^T Xc)``. Cost O(n d_in^2 + d_in^3 + n d_in d_out).
        """
        X, Y = _check_pair(X_base, X_ft)
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        if not (weight_decay >= 0 and math.isfinite(weight_decay)):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
        if method == "lstsq":
            if not (ridge >= 0 and math.isfinite(ridge)):
                raise ValueError(f"ridge must be a finite number >= 0, got {ridge}")
            with np.errstate(over="ignore", invalid="ignore"):
                try:
                    W, b = _fit_lstsq(X, Y, ridge=ridge, weight_decay=weight_decay)
                except np.linalg.LinAlgError:
                    W = b = np.array([np.nan])
            self.history = {}
            params: dict[str, Any] = {"ridge": ridge, "weight_decay": weight_decay}
        else:
            if not (lr > 0 and math.isfinite(lr)):
                raise ValueError(f"lr must be a positive number, got {lr}")
            if int(epochs) != epochs or epochs < 1:
                raise ValueError(f"epochs must be a positive integer, got {epochs}")
            if int(batch_size) != batch_size or batch_size < 1:
                raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
            if schedule not in _SCHEDULES:
                raise ValueError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}")
            if clip_norm is not None and not (clip_norm > 0 and math.isfinite(clip_norm)):
                raise ValueError(f"clip_norm must be positive or None, got {clip_norm}")
            with np.errstate(over="ignore", invalid="ignore"), _single_threaded_blas():
                W, b, losses = _fit_adam(
                    X, Y, lr=float(lr), epochs=int(epochs), batch_size=int(batch_size),
                    weight_decay=float(weight_decay), seed=seed, schedule=schedule, clip_norm=clip_norm,
                )
            self.history = {"loss": losses}
            params = {"lr": lr, "epochs": int(epochs), "batch_size": int(batch_size),
                      "weight_decay": weight_decay, "seed": None if seed is None else int(seed), "schedule": schedule,
                      "clip_norm": clip_norm}
        if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
            raise ValueError(
                "the ESM fit overflowed or diverged (non-finite weights); standardise / rescale the "
                "embeddings, lower lr or keep clip_norm"
            )
        self.weight, self.bias, self.method = W, b, method
        self.metadata.update({"method": method, "fit_params": json.dumps(params, sort_keys=True),
                              "n_train": str(X.shape[0])})
        return self

    # ------------------------------------------------------------------ use
    def transform(self, X: ArrayLike) -> np.ndarray:
        """``X @ W.T + b`` as float64 (n, d_out)."""
        W, b = self._require_fitted()
        A = check_features(X, name="X", min_samples=1)
        if A.shape[1] != self.dim_in:
            raise ValueError(
                f"X has {A.shape[1]} features but this ESM maps {self.dim_in}-dim embeddings; "
                "embed the target with the same base encoder the ESM was trained for"
            )
        mapped: np.ndarray = A @ W.T + b
        return mapped

    __call__ = transform

    def score_fit(self, X_base: ArrayLike, X_ft: ArrayLike) -> dict[str, float]:
        """How well the map reproduces ``X_ft``: ``mse`` (mean over all entries), ``r2``
        (1 - SS_res / SS_tot pooled over all output dimensions, i.e. variance-weighted) and
        ``cosine`` (mean row-wise cosine similarity of prediction and target)."""
        X, Y = _check_pair(X_base, X_ft)
        P = self.transform(X)
        if P.shape[1] != Y.shape[1]:
            raise ValueError(f"X_ft has {Y.shape[1]} dims but this ESM outputs {P.shape[1]}")
        R = P - Y
        ss_res = float(np.einsum("ij,ij->", R, R))
        Yc = Y - Y.mean(axis=0)
        ss_tot = float(np.einsum("ij,ij->", Yc, Yc))
        r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
        num = np.einsum("ij,ij->i", P, Y)
        den = np.linalg.norm(P, axis=1) * np.linalg.norm(Y, axis=1)
        cos = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        return {"mse": ss_res / R.size, "r2": r2, "cosine": float(cos.mean())}

    # ------------------------------------------------------------------ storage
    def to_arrays(self) -> dict[str, Any]:
        """``{"weight", "bias", "metadata"}`` (copies; metadata is a dict of strings)."""
        W, b = self._require_fitted()
        meta = dict(self.metadata)
        meta.update({"format": FORMAT, "format_version": FORMAT_VERSION, "dim_in": str(self.dim_in),
                     "dim_out": str(self.dim_out), "method": str(self.method)})
        return {"weight": W.copy(), "bias": b.copy(), "metadata": meta}

    @classmethod
    def from_arrays(cls, d: Mapping[str, Any]) -> EmbeddingSpaceMap:
        """Inverse of ``to_arrays``; also accepts ``{"weight", "bias"}`` alone."""
        if "weight" not in d:
            raise ValueError("ESM arrays need a 'weight' entry (d_out, d_in) and a 'bias' entry (d_out,)")
        meta = dict(d.get("metadata") or {})
        esm = cls(d["weight"], d.get("bias"), metadata=meta)
        for key, val in (("dim_in", esm.dim_in), ("dim_out", esm.dim_out)):
            if key in meta and str(meta[key]) != str(val):
                raise ValueError(f"ESM metadata says {key}={meta[key]} but the weight has {val}")
        return esm

    def save(self, path: str | os.PathLike[str], *, dtype: str = "float64", canonical: bool = False) -> Path:
        """Write to ``path``: safetensors unless the name ends with ``.npz``. No pickle either way.

        ``dtype="float32"`` halves the file; loading always returns float64. ``canonical=True``
        also stores the map's rotated triangular form (``estimators.esm_stats.canonical_tensors``
        of the stored, ``dtype``-rounded map: float64, about the size of a float32 weight), which
        ``estimators.esm_stats.stack_saved`` reads to score the file a third faster."""
        if dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        arrays = self.to_arrays()
        meta = arrays.pop("metadata")
        meta["stored_dtype"] = dtype
        tensors = {k: np.ascontiguousarray(v.astype(dtype)) for k, v in arrays.items()}
        if canonical:
            from .esm_stats import canonical_tensors

            tensors.update(canonical_tensors(tensors["weight"], tensors["bias"]))
        out = Path(path)
        if out.suffix == ".npz":
            with open(out, "wb") as fh:  # np.savez(str) would append .npz to other names
                arrays_out = {"metadata_json": np.array(json.dumps(meta, sort_keys=True)), **tensors}
                np.savez(fh, **arrays_out)  # type: ignore[arg-type]  # numpy stubs: **kwds hits allow_pickle
        else:
            from safetensors.numpy import save_file

            save_file(tensors, str(out), metadata=meta)
        return out

    @classmethod
    def load(cls, file: str | os.PathLike[str]) -> EmbeddingSpaceMap:
        """Read a file written by ``save`` (safetensors or ``.npz``); never unpickles.

        Also reads the layout of PyPI ``hf-dataset-selector`` (``hfselect``): a directory with
        ``config.json`` (kept as metadata, e.g. ``base_model_name``) and ``model.safetensors``
        holding the ``nn.Linear`` tensors ``model.weight`` (d_out, d_in) and ``model.bias`` -- the
        same ``x @ W.T + b`` convention -- or that ``model.safetensors`` file alone."""
        path = Path(file)
        if path.is_dir():
            return _load_hfselect_dir(cls, path)
        if not path.is_file():
            raise ValueError(f"no ESM file at {path}")
        with open(path, "rb") as fh:
            head = fh.read(4)
        try:
            if head.startswith(b"PK"):  # zip archive = .npz
                with np.load(path, allow_pickle=False) as z:
                    meta = json.loads(str(z["metadata_json"])) if "metadata_json" in z.files else {}
                    d = {"weight": z["weight"], "bias": z["bias"] if "bias" in z.files else None}
            else:
                from safetensors import safe_open

                with safe_open(str(path), framework="numpy") as f:
                    meta = dict(f.metadata() or {})
                    keys = set(f.keys())
                    prefix = "model." if "weight" not in keys and "model.weight" in keys else ""
                    if prefix and meta.get("format") not in (None, FORMAT):
                        meta["source_format"] = meta.pop("format")  # torch's "pt": an hfselect ESM
                    if f"{prefix}weight" not in keys:
                        raise ValueError(f"{path} holds no ESM weight (tensors 'weight' or 'model.weight'; found "
                                         f"{', '.join(sorted(keys)) or 'none'})")
                    d = {"weight": f.get_tensor(f"{prefix}weight"),
                         "bias": f.get_tensor(f"{prefix}bias") if f"{prefix}bias" in keys else None}
        except ValueError:
            raise
        except Exception as exc:  # corrupt / foreign file
            raise ValueError(f"{path} is not a readable ESM file (safetensors or npz): {exc}") from None
        if meta.get("format") not in (None, FORMAT):
            raise ValueError(f"{path} holds format {meta.get('format')!r}, not {FORMAT!r}")
        d["metadata"] = meta
        return cls.from_arrays(d)


def _load_hfselect_dir(cls: type[EmbeddingSpaceMap], path: Path) -> EmbeddingSpaceMap:
    """``<dir>/config.json`` + ``<dir>/model.safetensors`` (hf-dataset-selector's ESM layout)."""
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{path} is a directory without model.safetensors (hf-dataset-selector ESM layout: "
                         "config.json + model.safetensors)")
    config: dict[str, Any] = {}
    if (path / "config.json").is_file():
        try:
            config = json.loads((path / "config.json").read_text())
        except ValueError as exc:
            raise ValueError(f"{path / 'config.json'} is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise ValueError(f"{path / 'config.json'} must hold a JSON object")
    esm = cls.load(weights)
    esm.metadata.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in config.items()})
    return esm


# ---------------------------------------------------------------------- fitting back-ends
def _single_threaded_blas() -> contextlib.AbstractContextManager[Any]:
    """Per-batch products (batch x d x d) are too small to gain from BLAS threads and lose a
    lot to thread contention on a busy machine, so Adam runs with BLAS limited to one thread.
    The limit is process-wide while the fit runs."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    limits: contextlib.AbstractContextManager[Any] = threadpool_limits(limits=1, user_api="blas")
    return limits


def _fit_lstsq(X: np.ndarray, Y: np.ndarray, *, ridge: float, weight_decay: float) -> tuple[np.ndarray, np.ndarray]:
    n, d = X.shape
    mx, my = X.mean(axis=0), Y.mean(axis=0)
    Xc, Yc = X - mx, Y - my
    G = Xc.T @ Xc
    e, V = np.linalg.eigh(G)
    emax = float(e[-1]) if e.size else 0.0
    if emax <= 0:  # constant inputs: best map is the mean
        W = np.zeros((Y.shape[1], d))
        return W, my.copy()
    lam = ridge * emax + weight_decay * n
    keep = e > max(n, d) * d * np.finfo(np.float64).eps * emax
    inv = np.zeros_like(e)
    inv[keep] = 1.0 / (e[keep] + lam)
    B = Xc.T @ Yc  # (d_in, d_out)
    Wt = V @ (inv[:, None] * (V.T @ B))
    W = np.ascontiguousarray(Wt.T)
    b = my - W @ mx
    return W, b


def _fit_adam(X: np.ndarray, Y: np.ndarray, *, lr: float, epochs: int, batch_size: int, weight_decay: float,
              seed: int | None, schedule: str, clip_norm: float | None, beta1: float = 0.9, beta2: float = 0.999,
              eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """AdamW on (1/(B*d_out)) * ||X_B W^T + b - Y_B||^2, PyTorch semantics, float64."""
    n, d_in = X.shape
    d_out = Y.shape[1]
    rng = np.random.default_rng(seed)
    bound = 1.0 / math.sqrt(d_in)  # nn.Linear: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), ...)
    W = rng.uniform(-bound, bound, size=(d_out, d_in))
    b = rng.uniform(-bound, bound, size=(d_out,))
    mW, vW = np.zeros_like(W), np.zeros_like(W)
    mb, vb = np.zeros_like(b), np.zeros_like(b)
    steps_per_epoch = -(-n // batch_size)
    total = steps_per_epoch * epochs
    gW = np.empty_like(W)
    tmp = np.empty_like(W)
    losses: list[float] = []
    t = 0
    for _ in range(epochs):
        order = rng.permutation(n)
        ep_loss = 0.0
        for s in range(steps_per_epoch):
            idx = order[s * batch_size:(s + 1) * batch_size]
            xb, yb = X[idx], Y[idx]
            R = xb @ W.T
            R += b
            R -= yb
            bsz = idx.shape[0]
            ep_loss += float(np.einsum("ij,ij->", R, R)) / d_out  # sum over batch of per-example MSE
            R *= 2.0 / (bsz * d_out)  # dL/dpred
            np.matmul(R.T, xb, out=gW)
            gb = R.sum(axis=0)
            if clip_norm is not None:
                norm = math.sqrt(float(np.einsum("ij,ij->", gW, gW)) + float(gb @ gb))
                if norm > clip_norm:
                    scale = clip_norm / (norm + 1e-6)
                    gW *= scale
                    gb *= scale
            lr_t = lr * (total - t) / total if schedule == "linear" else lr
            t += 1
            if weight_decay:
                W *= 1.0 - lr_t * weight_decay
                b *= 1.0 - lr_t * weight_decay
            c1 = 1.0 - beta1 ** t
            c2s = math.sqrt(1.0 - beta2 ** t)
            # moments in place, no temporaries: m = b1 (m - g) + g, v = b2 (v - g^2) + g^2
            mW -= gW
            mW *= beta1
            mW += gW
            np.multiply(gW, gW, out=tmp)
            vW -= tmp
            vW *= beta2
            vW += tmp
            mb += (1.0 - beta1) * (gb - mb)
            vb += (1.0 - beta2) * (gb * gb - vb)
            # p -= lr/c1 * m / (sqrt(v)/c2s + eps)  ==  lr*c2s/c1 * m / (sqrt(v) + eps*c2s)
            np.sqrt(vW, out=tmp)
            tmp += eps * c2s
            np.divide(mW, tmp, out=tmp)
            tmp *= lr_t * c2s / c1
            W -= tmp
            b -= (lr_t * c2s / c1) * mb / (np.sqrt(vb) + eps * c2s)
        losses.append(ep_loss / n)
    return W, b, losses


# ---------------------------------------------------------------------- ESM-LogME
def _as_esm(esm: object) -> EmbeddingSpaceMap:
    if isinstance(esm, EmbeddingSpaceMap):
        esm._require_fitted()
        return esm
    if isinstance(esm, (str, os.PathLike)):
        return EmbeddingSpaceMap.load(esm)
    if isinstance(esm, Mapping):
        return EmbeddingSpaceMap.from_arrays(esm)
    raise ValueError(
        "esm must be an EmbeddingSpaceMap, a path to a saved ESM, or a dict with 'weight'/'bias'; "
        f"got {type(esm).__name__}"
    )


def map_target(X: ArrayLike, esm: object, *, name: str = "this estimator") -> np.ndarray:
    """The target's base-encoder embeddings ``X`` mapped through a source's ESM (validated)."""
    if esm is None:
        raise ValueError(f"{name} needs esm=: the source's EmbeddingSpaceMap (object, file path or arrays)")
    m = _as_esm(esm)
    A = check_features(X, name="X (target base-encoder embeddings)")
    if A.shape[1] != m.dim_in:
        raise ValueError(
            f"X has {A.shape[1]} features but the ESM expects {m.dim_in}; use the ESM's base encoder for the target"
        )
    return m.transform(A)


def esm_logme(X: ArrayLike, y: ArrayLike, *, esm: object = None, **logme_params: Any) -> float:
    """ESM-LogME (Schulte et al., EMNLP 2024): LogME of the target's base-encoder embeddings
    mapped through a source's ESM, ``LogME(X @ W.T + b, y)``.

    X: target embeddings (n, d_in) from the *base* encoder the ESM was trained on; y: labels
    (or float targets with ``regression=True``; other keyword arguments go to LogME); ``esm``:
    an ``EmbeddingSpaceMap``, a path to a saved one, or ``{"weight", "bias"}``. Higher is better
    (the evidence that the fine-tuned-on-source features fit the target labels). Cost
    O(n d_in d_out) for the map + LogME's O(n d^2 + d^3 + dC).
    """
    from .logme import logme  # lazy: keeps `import estimators.esm` light

    return float(logme(map_target(X, esm, name="esm_logme"), y, **logme_params))


def esm_etran_lda(X: ArrayLike, y: ArrayLike, *, esm: object = None, **params: Any) -> float:
    """ETran's LDA score (Gholami et al., ICCV 2023) of the target's base-encoder embeddings
    mapped through a source's ESM (Schulte et al., EMNLP 2024): ``etran_lda(X @ W.T + b, y)``.

    Same inputs as ``esm_logme``; keyword arguments go to ``etran_lda``. Higher is better.
    Cost O(n d_in d_out) for the map + O(ndC) (shrinkage LDA).
    """
    from .etran import etran_lda

    return float(etran_lda(map_target(X, esm, name="esm_etran_lda"), y, **params))


def esm_hscore_shrinkage(X: ArrayLike, y: ArrayLike, *, esm: object = None, **params: Any) -> float:
    """Shrinkage H-score (Ibrahim et al., ICLR 2023) of the target's base-encoder embeddings
    mapped through a source's ESM (Schulte et al., EMNLP 2024): ``hscore_shrinkage(X @ W.T + b, y)``.

    Same inputs as ``esm_logme``; keyword arguments go to ``hscore_shrinkage``. Higher is better.
    Cost O(n d_in d_out) for the map + O(nd^2 + d^3 + Cd^2).
    """
    from .hscore_shrinkage import hscore_shrinkage

    return float(hscore_shrinkage(map_target(X, esm, name="esm_hscore_shrinkage"), y, **params))
