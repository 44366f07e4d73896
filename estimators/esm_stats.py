"""ESM scores of many sources from one target's sufficient statistics.

An embedding-space map (ESM, Schulte et al., EMNLP 2024) is linear: the target's base-encoder
embeddings ``X`` (n, d_in) become ``F = X W^T + b`` (n, d_out) for a source with map ``(W, b)``.
Every quantity the default ``esm_*`` estimators read from ``F`` is a linear or quadratic
function of ``X``, so it follows from statistics of the target computed once (``TargetStats``)
and the source's ``(W, b)``. With ``m`` the mean of X, ``Xc = X - m``, ``Sc = Xc^T Xc``,
per-class sums ``s_c`` of Xc, counts ``n_c``, and ``m_F = W m + b``.

All three share one product per source: with ``Sc = R R^T`` (R: (d_in, r), r = rank of Sc,
computed once per target) and ``Pc = W R``, ``P = [sqrt(n) m_F, Pc]`` (d_out x k, k = 1 + r)
satisfies ``P P^T = F^T F`` and ``Pc Pc^T = W Sc W^T``; the targets' coordinates in the matching
orthonormal basis ``H = [1 / sqrt(n), Xc R^+T]`` of the column space of ``[X, 1]`` are
``z = H^T Y = [1^T Y / sqrt(n); R^+ Xc^T Y]``, target-only (``_target_basis``).

* **LogME** (``esm_logme``, You et al., JMLR 2022): since ``F = H P^T``, the non-zero
  eigenvalues of ``F^T F`` are those of the k x k ``A = P^T P`` and the projections of Y on F's
  left singular vectors are ``Q^T z`` (Q: eigenvectors of A). The fixed point of
  ``estimators.logme`` (per-column convergence, numerical-rank cut
  ``sigma > sigma_max * max(n, d_out) * eps``) needs only ``tr(A (A + tI)^-1)``,
  ``log det(A + tI)`` and ``(A + tI)^-1 z`` for a few t per column, so the numpy path reduces
  A to tridiagonal form once (``A = U T U^T``: syrk + LAPACK sytrd, no eigenvectors) and gets
  all three from LDL^T factorisations of ``T + tI`` in O(k) each (``_logme_tridiagonal``).
  When n <= d the rank k <= n: this is the reference's n x n route.
* **Shrinkage H-score** (``esm_hscore_shrinkage``, Ibrahim et al., ICLR 2023): the covariance
  of F is ``Pc Pc^T / n``; the class-mean deviations are ``W s_c = Pc z_c[1:]``. With LogME's
  tridiagonal reduction (whose trailing block ``T_c`` reduces ``Pc^T Pc``) the trace, the
  Frobenius norm and ``tr(Sigma_LW^-1 B^T B)`` take O(k C) per source (push-through identity,
  ``_hscore_shrinkage_chunk``); the eigendecomposition with the reference's pseudo-inverse
  cut-off is used where the shrinkage is too small to guarantee it passes. The Ledoit-Wolf
  shrinkage also needs ``sum_i ||Fc_i||^4``, a fourth moment of X: that one term is computed
  from the rows: ``||Fc_i||^2 = ||L^T h_i||^2`` with L the Cholesky factor of ``Pc^T Pc`` and
  ``h_i`` the row's coordinates, one triangular (n, r) x (r, r) product per source.
* **ETran-LDA** (``esm_etran_lda``, Gholami et al., ICCV 2023): the class means of F are
  ``mu_c^F = W mu_c + b``; the logits ``F mu_c^F - ||mu_c^F||^2/2 + log pi_c`` equal
  ``Xc A_c + const_c`` with ``A_c = W^T mu_c^F``: one (n, d_in) x (d_in, C) product per source.
  The softmax is per row, so this term needs the rows; it is O(n d C), small next to d^3.

Cost per source (d = d_in ~ d_out ~ k): LogME ``d^3`` (trmm, ``W R`` with R triangular) +
``d^3`` (syrk) + ``4/3 d^3`` (sytrd) + ``O(d^2 C)`` + ``O(d C)`` per fixed-point iteration; the
H-score adds ``d^3 / 3 + n d^2`` (its fourth moment, the only term that grows with n) and
O(d C); the LDA ``O(n d C + C d^2)``. ``TargetStats.from_data`` costs O(n d^2) once per target
and the basis O(d^3 + n d^2) once per target. Values equal ``estimators.score("esm_<name>", X, y, esm=...)`` up to
floating-point rounding.

**Canonical maps** (``canonical_maps``): rotating a map's output space (``F -> F Q``) changes none
of these scores, and the QL factorisation ``W = Q [0; L]`` gives the equivalent map ``[0; L]`` with
L lower triangular. For such maps ``W root`` is a triangular x triangular product and ``P^T P``
a LAPACK lauum (``d^3 / 3`` flops each instead of the trmm's and syrk's ``d^3``), and the
H-score's row norms come from ``M_s = L root`` without a Cholesky factor. The service stores
every ESM with its canonical form (``EmbeddingSpaceMap.save(canonical=True)``, read back by
``stack_saved``), computed once per source.

``score_many`` runs in numpy (the route above, batched over a chunk of sources) or, with
``device=`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``), in torch float64 on that device (batched
``eigh`` of A for LogME, a d_out x d_out solve for the H-score: the same values).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._classwise import class_sums
from ._validation import check_features, check_features_labels, check_targets
from .logme import _EPS, _MAX_ITER, _RTOL

__all__ = ["TargetStats", "score_many", "stack_esms", "SUPPORTED", "logme_lowrank", "rank_two_stage",
           "combine_shortlist", "canonical_maps", "canonical_tensors", "stack_saved"]

#: The estimators ``score_many`` computes from the statistics (the tasks default).
SUPPORTED = ("esm_logme", "esm_etran_lda", "esm_hscore_shrinkage")
_HSCORE_RCOND = 1e-15  # estimators.hscore's pseudo-inverse cut-off
_SOLVE_MARGIN = 1e3  # the solve is used when the smallest eigenvalue bound is 1e3 x above the cut-off
_CHUNK_BYTES = 256 * 2**20  # work arrays per chunk of sources
_SYTRD_BLOCK = 8  # LAPACK sytrd block size (workspace k x 8): measured fastest at k ~ 400, 1 thread


@dataclass(frozen=True)
class TargetStats:
    """Sufficient statistics of one target (base-encoder embeddings + labels) for ESM scoring.

    ``mean`` (d,), ``scatter = Xc^T Xc`` (d, d) with ``Xc = X - mean``, ``centred`` = Xc (n, d)
    (the rows, for the two terms that need them), and either class statistics (``labels`` (n,)
    in 0..C-1, ``counts`` (C,), ``class_sums`` (C, d) of Xc) or float targets (``targets``
    (n, t), ``xty = Xc^T Y`` (d, t)).
    """

    n: int
    d: int
    mean: np.ndarray
    scatter: np.ndarray
    centred: np.ndarray
    labels: np.ndarray | None = None
    counts: np.ndarray | None = None
    class_sums: np.ndarray | None = None
    targets: np.ndarray | None = None
    xty: np.ndarray | None = None
    _derived: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def regression(self) -> bool:
        return self.targets is not None

    def label_moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(Xc^T Y (d, t), 1^T Y (t,), ||Y||^2 per column (t,))`` with Y the one-hot labels
        (t = C) or the float targets."""
        if self.targets is not None and self.xty is not None:
            Y = self.targets
            return self.xty, Y.sum(axis=0), np.einsum("ij,ij->j", Y, Y)
        counts = _need(self.counts, "counts").astype(np.float64)
        return _need(self.class_sums, "class_sums").T, counts, counts

    @property
    def n_classes(self) -> int:
        return 0 if self.counts is None else int(self.counts.shape[0])

    @classmethod
    def from_data(cls, X: Any, y: Any, *, regression: bool = False) -> TargetStats:
        """Statistics of target features ``X`` (n, d) with class labels ``y`` (n,) (any sortable
        labels, remapped to 0..C-1 in sorted order as the estimators do) or, with
        ``regression=True``, float targets (n,) / (n, t) (LogME only). Cost O(n d^2)."""
        if regression:
            X = check_features(X)
            Y = check_targets(y, X.shape[0])
        else:
            X, labels, C = check_features_labels(X, y)
        n, d = X.shape
        mean = X.mean(axis=0)
        Xc = np.ascontiguousarray(X - mean)
        scatter = Xc.T @ Xc
        scatter = (scatter + scatter.T) / 2.0
        if regression:
            return cls(n, d, mean, scatter, Xc, targets=Y, xty=Xc.T @ Y)
        sums, counts = class_sums(Xc, labels, C)
        return cls(n, d, mean, scatter, Xc, labels=labels, counts=counts.astype(np.int64), class_sums=sums)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (for a blob store); ``from_arrays`` inverts it."""
        out = {"mean": self.mean, "scatter": self.scatter, "centred": self.centred}
        for k in ("labels", "counts", "class_sums", "targets", "xty"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> TargetStats:
        try:
            Xc = np.ascontiguousarray(arrays["centred"], dtype=np.float64)
            mean = np.asarray(arrays["mean"], dtype=np.float64)
            scatter = np.asarray(arrays["scatter"], dtype=np.float64)
        except KeyError as exc:
            raise ValueError(f"target statistics lack the {exc.args[0]!r} array") from None
        n, d = Xc.shape
        if mean.shape != (d,) or scatter.shape != (d, d):
            raise ValueError("target statistics have inconsistent shapes")
        def get(k: str, dt: type) -> np.ndarray | None:
            return None if arrays.get(k) is None else np.asarray(arrays[k], dtype=dt)

        return cls(n, d, mean, scatter, Xc, labels=get("labels", np.int64), counts=get("counts", np.int64),
                   class_sums=get("class_sums", np.float64), targets=get("targets", np.float64),
                   xty=get("xty", np.float64))


def _need(a: np.ndarray | None, what: str) -> np.ndarray:
    if a is None:
        raise ValueError(f"these target statistics have no {what!r}")
    return a


# ---------------------------------------------------------------------- ESM stacks
def stack_esms(esms: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(W (S, d_out, d_in), b (S, d_out))`` float64 from ESMs (objects, paths or
    ``{"weight", "bias"}`` dicts, as ``estimators.esm`` accepts); all must share their shapes."""
    from .esm import _as_esm

    maps = [_as_esm(e) for e in esms]
    if not maps:
        raise ValueError("no ESMs given")
    Ws = [_need(m.weight, "weight") for m in maps]
    bs = [_need(m.bias, "bias") for m in maps]
    shapes = {w.shape for w in Ws}
    if len(shapes) != 1:
        raise ValueError(f"the ESMs have different shapes {sorted(shapes)}; score each base encoder separately")
    return np.stack(Ws), np.stack(bs)


def _check_stack(W: Any, b: Any, d_in: int) -> tuple[np.ndarray, np.ndarray]:
    W = np.asarray(W, dtype=np.float64)
    if W.ndim == 2:
        W = W[None]
    if W.ndim != 3 or W.shape[0] < 1:
        raise ValueError(f"ESM weights must be stacked as (S, d_out, d_in), got shape {W.shape}")
    S, d_out, d = W.shape
    if d != d_in:
        raise ValueError(f"the ESMs expect {d}-dim inputs but the target statistics have d={d_in}; "
                         "use the ESMs' base encoder for the target")
    b = np.zeros((S, d_out)) if b is None else np.asarray(b, dtype=np.float64).reshape(S, -1)
    if b.shape != (S, d_out):
        raise ValueError(f"ESM biases must have shape ({S}, {d_out}), got {b.shape}")
    if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
        raise ValueError("ESM weights or biases contain NaN or infinite values")
    return W, b


def canonical_maps(W: Any, bias: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The ESMs rotated in their output space so that each weight is ``[0; L]`` with L (d_in x
    d_in) lower triangular: ``(Q^T W, Q^T b)`` from ``W = Q [0; L]`` (a QL factorisation).

    The features become ``F Q``: every estimator of ``SUPPORTED`` and ``logme_lowrank`` is
    invariant under an orthogonal rotation of F (they read F through ``F^T F``, ``F^T Y`` and
    norms), so the scores are the same (to rounding). ``score_many`` detects maps of this form
    and then forms ``W root`` as a triangular x triangular product and ``P^T P`` with LAPACK
    lauum (``d^3 / 3`` flops each instead of ``d^3``): a third of the per-source products.
    Computing it costs one QR (``4/3 d^3``) per source: done once when a catalogue stores a map
    (``app.services.sources``), not per target. Maps with ``d_out < d_in`` have no such form and
    are returned unchanged.

    W: (S, d_out, d_in) or (d_out, d_in); bias: (S, d_out) or (d_out,) (default 0).
    Returns float64 arrays of the input's shapes.
    """
    W = np.asarray(W, dtype=np.float64)
    single = W.ndim == 2
    Ws, bs = _check_stack(W, bias, W.shape[-1])
    S, d_out, d_in = Ws.shape
    Wc, bc = Ws.copy(), bs.copy()
    if d_out >= d_in and d_in:
        from scipy.linalg import lapack

        top = d_out - d_in
        for s in range(S):
            # QL of W from the QR of the matrix with rows and columns reversed (J W J = Q' R'):
            # W = (J Q' J) (J [R'; 0] J), and J [R'; 0] J = [0; J R' J], J R' J lower triangular.
            qr, tau, _, info = lapack.dgeqrf(np.asfortranarray(Ws[s, ::-1, ::-1]))
            if info != 0:  # pragma: no cover - LAPACK argument error
                raise np.linalg.LinAlgError(f"QR of ESM {s} failed (info={info})")
            Wc[s] = 0.0
            Wc[s, top:] = np.tril(qr[:d_in, :d_in][::-1, ::-1])
            qtb = lapack.dormqr(b"L", b"T", qr, tau, np.asfortranarray(bs[s, ::-1, None]), lwork=1)[0]
            bc[s] = qtb[::-1, 0]
    if single:
        return Wc[0], bc[0]
    return Wc, bc


#: Tensor names of the canonical form in a saved ESM file (``EmbeddingSpaceMap.save(canonical=True)``).
CANONICAL_LOWER, CANONICAL_BIAS = "canonical.lower", "canonical.bias"


def canonical_tensors(weight: Any, bias: Any) -> dict[str, np.ndarray]:
    """``canonical_maps`` of one map as tensors to store beside it: the lower triangle of L packed
    row by row (float64, ``d_in (d_in + 1) / 2``) and the rotated bias (float64, d_out). Empty
    when ``d_out < d_in`` (no triangular form)."""
    W, b = canonical_maps(np.asarray(weight, dtype=np.float64), np.asarray(bias, dtype=np.float64))
    d_out, d_in = W.shape
    if d_out < d_in or d_in < 2:
        return {}
    rows, cols = np.tril_indices(d_in)
    return {CANONICAL_LOWER: np.ascontiguousarray(W[d_out - d_in:][rows, cols]), CANONICAL_BIAS: b}


def stack_saved(paths: Sequence[Any], *, canonical: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` stacked from saved ESM files (as ``stack_esms``). With ``canonical`` and every
    file holding its canonical tensors (``EmbeddingSpaceMap.save(canonical=True)``), the
    canonical maps instead: the same scores, and ``score_many`` takes its triangular route."""
    if canonical and paths:
        out = _stack_canonical(paths)
        if out is not None:
            return out
    return stack_esms(paths)


def _stack_canonical(paths: Sequence[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    from safetensors import SafetensorError, safe_open

    W: np.ndarray | None = None
    b: np.ndarray | None = None
    flat: np.ndarray | None = None
    for s, path in enumerate(paths):
        try:
            with safe_open(str(path), framework="numpy") as f:
                if CANONICAL_LOWER not in set(f.keys()):
                    return None
                packed, bias = f.get_tensor(CANONICAL_LOWER), f.get_tensor(CANONICAL_BIAS)
        except (SafetensorError, OSError, ValueError):  # an .npz or hfselect folder: no canonical form
            return None
        d_in = int(round((math.sqrt(8 * packed.size + 1) - 1) / 2))
        if W is None:
            W, b = np.zeros((len(paths), bias.size, d_in)), np.empty((len(paths), bias.size))
            rows, cols = np.tril_indices(d_in)
            flat = (bias.size - d_in + rows) * d_in + cols  # positions in a (d_out, d_in) map
        if b is None or flat is None or bias.size != W.shape[1] or packed.size != flat.size:
            return None  # different shapes: stack_esms says which
        W[s].reshape(-1)[flat] = packed
        b[s] = bias
    return (W, b) if W is not None and b is not None else None


def _triangular_maps(W: np.ndarray) -> bool:
    """True when every map of the stack has ``canonical_maps``' form ``[0; L]``, L lower triangular."""
    S, d_out, d_in = W.shape
    if d_out < d_in or d_in < 2:
        return False
    top = d_out - d_in
    if top and np.any(W[:, :top]):
        return False
    upper = np.triu(np.ones((d_in, d_in), dtype=bool), 1)
    return not bool(np.any(W[:, top:][:, upper]))


def _lower_product(L: np.ndarray, R: np.ndarray, out: np.ndarray, block: int = 64) -> None:
    """``out = L @ R`` for lower-triangular L and R (d x d; ``out`` Fortran-ordered), by blocks of
    columns: ``out[j:, J] = L[j:, j:] @ R[j:, J]`` (BLAS trmm), ``d^3 / 3`` flops instead of d^3.
    L is read as ``(L^T)^T`` with ``L^T`` the Fortran view of a C-ordered L (a source's rows), so
    its blocks are passed without a transposing copy."""
    from scipy.linalg import blas

    d = L.shape[0]
    U = L.T  # upper triangular
    out[:] = 0.0
    for j in range(0, d, block):
        stop = min(d, j + block)
        out[j:, j:stop] = blas.dtrmm(1.0, U[j:, j:], R[j:, j:stop], side=0, lower=0, trans_a=1)


# ---------------------------------------------------------------------- array back-ends
class _Numpy:
    float = np.float64

    def asarray(self, a: Any) -> Any:
        return np.asarray(a, dtype=np.float64)

    def to_numpy(self, a: Any) -> Any:
        return np.asarray(a)

    def T(self, a: Any) -> Any:
        return np.swapaxes(a, -1, -2)

    def eigh(self, a: Any) -> Any:
        return np.linalg.eigh(a)

    def solve(self, a: Any, b: Any) -> Any:
        return np.linalg.solve(a, b)

    def eye(self, d: Any) -> Any:
        return np.eye(d)

    def diag(self, a: Any) -> Any:
        return np.diagonal(a, axis1=-2, axis2=-1)

    def amax(self, a: Any, axis: Any) -> Any:
        return a.max(axis=axis)

    def where(self, c: Any, a: Any, b: Any) -> Any:
        return np.where(c, a, b)

    def logsumexp(self, a: Any, axis: Any) -> Any:
        top = a.max(axis=axis, keepdims=True)
        return np.log(np.exp(a - top).sum(axis=axis)) + np.squeeze(top, axis)

    def index(self, a: Any) -> Any:
        return np.asarray(a, dtype=np.int64)

    def fsum(self, a: Any, axis: Any) -> Any:
        return a.sum(axis=axis, dtype=np.float64)

    def einsum(self, spec: str, *ops: Any) -> Any:
        return np.einsum(spec, *ops)

    log, sqrt, exp, abs = np.log, np.sqrt, np.exp, np.abs


class _Torch:
    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} asked for, but torch sees no CUDA device")
        self.float = torch.float64

    def asarray(self, a: Any) -> Any:
        return self.torch.as_tensor(np.asarray(a, dtype=np.float64), device=self.device)

    def to_numpy(self, a: Any) -> Any:
        return a.detach().cpu().numpy()

    def T(self, a: Any) -> Any:
        return a.transpose(-1, -2)

    def eigh(self, a: Any) -> Any:
        return self.torch.linalg.eigh(a)

    def solve(self, a: Any, b: Any) -> Any:
        return self.torch.linalg.solve(a, b)

    def eye(self, d: Any) -> Any:
        return self.torch.eye(d, dtype=self.float, device=self.device)

    def diag(self, a: Any) -> Any:
        return self.torch.diagonal(a, dim1=-2, dim2=-1)

    def amax(self, a: Any, axis: Any) -> Any:
        return a.amax(dim=axis)

    def where(self, c: Any, a: Any, b: Any) -> Any:
        t = self.torch
        return t.where(c, t.as_tensor(a, dtype=self.float, device=self.device),
                       t.as_tensor(b, dtype=self.float, device=self.device))

    def logsumexp(self, a: Any, axis: Any) -> Any:
        return self.torch.logsumexp(a, dim=axis)

    def index(self, a: Any) -> Any:
        return self.torch.as_tensor(np.asarray(a, dtype=np.int64), device=self.device)

    def fsum(self, a: Any, axis: Any) -> Any:
        return a.sum(dim=axis, dtype=self.float)

    def log(self, a: Any) -> Any:
        return self.torch.log(a)

    def sqrt(self, a: Any) -> Any:
        return self.torch.sqrt(a)

    def exp(self, a: Any) -> Any:
        return self.torch.exp(a)

    def abs(self, a: Any) -> Any:
        return self.torch.abs(a)

    def einsum(self, spec: str, *ops: Any) -> Any:
        return self.torch.einsum(spec, *ops)


def _backend(device: Any) -> Any:
    if device is None:
        return _Numpy()
    if not isinstance(device, str) and not hasattr(device, "type"):
        raise ValueError(f"device must be None (numpy) or a torch device name such as 'cpu' or 'cuda', got {device!r}")
    try:
        return _Torch(str(device))
    except ImportError:
        raise ValueError("device= needs torch installed; leave device=None for the numpy path") from None
    except RuntimeError as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from None


# ---------------------------------------------------------------------- LogME, batched
def _fixed_point(xp: Any, sigma: Any, mask: Any, x2: Any, y_sq: Any, n: int) -> Any:
    """``estimators.logme._fixed_point_evidence`` for a batch of sources.

    sigma (S, k, 1) eigenvalues (zero where ``mask`` (S, k, 1) is False), x2 (S, k, t) squared
    projections (zero where masked), y_sq (t,) or (S, t). Returns the evidence / n, (S, t).
    """
    k = xp.fsum(mask, 1)  # (S, 1)
    res_x2 = y_sq - x2.sum(1)
    ones = res_x2 * 0.0 + 1.0
    alpha, beta = ones, ones
    m2 = res2 = ones * 0.0
    active = ones > 0
    for _ in range(_MAX_ITER):
        t = (alpha / beta)[:, None, :]
        inv = 1.0 / (sigma + t)
        gamma = (sigma * inv).sum(1)
        m2_new = (sigma * x2 * inv**2).sum(1)
        res2_new = (x2 * (t * inv) ** 2).sum(1) + res_x2
        alpha_new = gamma / (m2_new + _EPS)
        beta_new = (n - gamma) / (res2_new + _EPS)
        alpha = xp.where(active, alpha_new, alpha)
        beta = xp.where(active, beta_new, beta)
        m2 = xp.where(active, m2_new, m2)
        res2 = xp.where(active, res2_new, res2)
        tt = t[:, 0, :]
        active = active & ~(xp.abs(alpha_new / beta_new - tt) / tt <= _RTOL)
        if not bool(active.any()):
            break
    logdet = (xp.log(alpha[:, None, :] + beta[:, None, :] * sigma) * mask).sum(1)
    evidence = (k / 2.0 * xp.log(alpha) + n / 2.0 * xp.log(beta) - 0.5 * logdet
                - beta / 2.0 * res2 - alpha / 2.0 * m2 - n / 2.0 * math.log(2 * math.pi))
    return evidence / n


def _logme_batch(xp: Any, sigma: Any, vecs: Any, P: Any, y_sq: Any, n: int, size: int) -> Any:
    """Mean LogME evidence per source from the eigenvalues ``sigma`` (S, k, ascending) of a Gram
    matrix and the targets' projections ``P`` (S, k, t): ``V^T F^T Y`` for ``F^T F`` (``vecs``
    given: divided by sqrt(sigma) here) or ``U^T Y`` for ``F F^T`` (``vecs=None``). ``size`` =
    max(n, d) sets the numerical-rank cut as in ``estimators.logme``."""
    top = sigma[:, -1:]
    mask = sigma > top * size * np.finfo(np.float64).eps
    sig = xp.where(mask, sigma, 0.0)
    if vecs is not None:  # d-side: x = V^T F^T Y / sqrt(sigma)
        x = P / xp.sqrt(xp.where(mask, sigma, 1.0))[:, :, None]
    else:
        x = P
    x = x * mask[:, :, None]
    ev = _fixed_point(xp, sig[:, :, None], mask[:, :, None], x * x, y_sq, n)
    bad = ~(top[:, 0] > 0)
    return ev.mean(1), bad



# ---------------------------------------------------------------------- main entry point
def score_many(stats: TargetStats, esms: Any, estimators: Sequence[str] = SUPPORTED, *, bias: Any = None,
               device: Any = None, chunk_size: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Scores of many sources' ESMs on one target, from the target's statistics.

    stats: ``TargetStats.from_data(X, y)`` of the target's base-encoder embeddings.
    esms: a sequence of ESMs (``EmbeddingSpaceMap``, saved path, or ``{"weight", "bias"}``), or
        the weights stacked as an array (S, d_out, d_in) with ``bias`` (S, d_out) (default 0).
    estimators: names from ``SUPPORTED``; the result's columns follow this order.
    device: None = numpy; a torch device name (``"cpu"``, ``"cuda"``) runs the same algorithm in
        torch float64 there. chunk_size: sources per batch (default: work arrays of ~256 MiB).
    progress: optional callable ``progress(done_sources, total_sources)`` after each chunk.

    Returns float64 (S, E), row s = source s. Higher is better for all three. An entry is NaN
    where the one-source estimator would raise (e.g. a map that sends every target row to the
    same point: LogME of rank-0 features).
    """
    ests = list(estimators)
    if isinstance(estimators, str) or not ests:
        raise ValueError(f"estimators must be a non-empty list of names from {SUPPORTED}")
    for e in ests:
        if e not in SUPPORTED:
            raise ValueError(f"{e!r} has no statistics path; choose from {', '.join(SUPPORTED)}")
    W, b = _stack_input(stats, esms, bias)
    if stats.regression and set(ests) - {"esm_logme"}:
        raise ValueError("with float targets (regression) only esm_logme applies; "
                         f"{', '.join(sorted(set(ests) - {'esm_logme'}))} need class labels")
    S, d_out, d_in = W.shape
    if chunk_size is None:
        # P and the k x k Gram (numpy) or the d_out x d_out matrices (torch) per source; the
        # (n, d_out) rows of the H-score's fourth moment are computed in sub-blocks.
        per_source = 8 * (4 * d_out * max(d_out, d_in) + 2 * stats.n * max(stats.n_classes, 1))
        chunk_size = int(max(1, min(256, _CHUNK_BYTES // max(per_source, 1))))
    elif int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    xp = _backend(device)
    t = _prepare(xp, stats)
    out = np.empty((S, len(ests)))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for start in range(0, S, int(chunk_size)):
            stop = min(S, start + int(chunk_size))
            Wc, bc = xp.asarray(W[start:stop]), xp.asarray(b[start:stop])
            res = _score_chunk(xp, t, stats, Wc, bc, ests)
            for j, e in enumerate(ests):
                out[start:stop, j] = res[e]
            if progress is not None:
                progress(stop, S)
    out[~np.isfinite(out)] = np.nan
    return out


def _target_basis(st: TargetStats) -> dict[str, np.ndarray]:
    """Target-side quantities shared by every source (once per target, O(d^3)).

    ``root`` (d, r): ``Sc = root root^T`` on the r numerically non-null directions of Sc
    (eigenvalues above ``lambda_max * max(n, d) * eps``), rotated (QR) so that ``root[:r]`` is
    lower triangular: ``W @ root`` is then a triangular product (BLAS trmm, half a GEMM's flops)
    with ``lower = [root, 0]`` (d, d), lower triangular.
    ``z`` (1 + r, t): the targets' coordinates ``H^T Y`` in the orthonormal basis
    ``H = [1 / sqrt(n), Xc root^+T]`` of the column space of ``[X, 1]``:
    ``z = [1^T Y / sqrt(n); root^+ Xc^T Y]``. ``y_sq``: ``||Y||^2`` per column. With class
    labels, ``rows`` = ``Hc = Xc root^+T`` (n, r): ``W xc_i = Pc h_i`` for the H-score's rows.
    """
    n, d = st.n, st.d
    lam, V = np.linalg.eigh(st.scatter)
    top = float(lam[-1])
    keep = lam > top * max(n, d) * np.finfo(np.float64).eps if top > 0 else np.zeros(d, dtype=bool)
    lam, V = lam[keep], V[:, keep]
    r = int(lam.size)
    xcy, ysum, y_sq = st.label_moments()
    if r:
        q, upper = np.linalg.qr((V * np.sqrt(lam)).T)  # (V l^1/2)^T = q upper; root = upper^T
        root = np.ascontiguousarray(upper.T)
        pinv = (q.T / np.sqrt(lam)) @ V.T  # root^+ = q^T l^-1/2 V^T, (r, d)
        coords = pinv @ xcy
    else:
        root = np.zeros((d, 0))
        coords = np.zeros((0, xcy.shape[1]))
    z = np.vstack([ysum[None, :] / math.sqrt(n), coords])
    lower = np.zeros((d, d), order="F")  # [root, 0]: lower triangular, for BLAS trmm
    lower[:, :r] = root
    out = {"root": root, "lower": lower, "z": z, "y_sq": np.asarray(y_sq, dtype=np.float64)}
    if not st.regression and r:  # the rows' coordinates Hc = Xc root^+T (n, r), for the H-score
        out["rows"] = np.ascontiguousarray(st.centred @ pinv.T)
    return out


def _prepare(xp: Any, st: TargetStats) -> dict[str, Any]:
    basis = st._derived.get("basis")
    if basis is None:  # once per target, reused by every call on it; one atomic store
        basis = _target_basis(st)
        st._derived["basis"] = basis
    t = {"mean": xp.asarray(st.mean), "Xc": xp.asarray(st.centred), "root": xp.asarray(basis["root"]),
         "z": xp.asarray(basis["z"]), "y_sq": xp.asarray(basis["y_sq"]), "np": basis}
    if not st.regression:
        counts = _need(st.counts, "counts")
        t["sums"] = xp.asarray(_need(st.class_sums, "class_sums"))
        t["counts"] = xp.asarray(counts.astype(np.float64))
        t["labels"] = xp.index(_need(st.labels, "labels"))
        t["rows"] = xp.index(np.arange(st.n))
        t["log_prior"] = xp.asarray(np.log(counts / st.n))
    return t


def _score_chunk(xp: Any, t: dict[str, Any], st: TargetStats, W: Any, b: Any, ests: list[str]) -> dict[str, np.ndarray]:
    """The requested scores of one chunk of sources. LogME and the H-score share ``P`` (the map
    applied to the target's basis) and, on the numpy path, its tridiagonal reduction."""
    res: dict[str, np.ndarray] = {}
    logme, hscore = "esm_logme" in ests, "esm_hscore_shrinkage" in ests
    if logme or hscore:
        P, M = _project(xp, t, st.n, W, b)  # (S, d_out, k), column 0 = sqrt(n) m_F
        tri = None
        if isinstance(xp, _Numpy) and P.shape[2] >= 2:
            tri = _tridiagonalise(P, t["np"]["z"], t["np"].get("rows") if hscore else None, M)
        if logme:
            if tri is not None:
                res["esm_logme"] = _logme_tridiagonal(P, t["np"]["z"], t["np"]["y_sq"], st.n, max(st.n, P.shape[1]),
                                                      tri=tri)
            else:
                res["esm_logme"] = _logme_dense(xp, t, P, st.n)
        if hscore:
            res["esm_hscore_shrinkage"] = _hscore_shrinkage_chunk(xp, t, st, W, P, tri)
        del P, M
    if "esm_etran_lda" in ests:
        res["esm_etran_lda"] = _etran_lda_chunk(xp, t, st, W, b)
    return res


def _project(xp: Any, t: dict[str, Any], n: int, W: Any, b: Any) -> tuple[Any, np.ndarray | None]:
    """``P = [sqrt(n) m_F, W root]`` (S, d_out, 1 + r) for a chunk: ``P P^T = F^T F`` and its
    last r columns ``Pc = W root`` give ``Pc Pc^T = W Sc W^T``, the centred scatter of F.
    numpy: one triangular product (trmm) over the whole chunk, ``W [root, 0]``; for maps in
    ``canonical_maps``' form ``[0; L]``, ``M_s = L_s [root, 0]`` per source (triangular x
    triangular, ``_lower_product``), returned as the second value (S, d_in, d_in), ``M[s]``
    holding ``M_s`` in Fortran order (``M[s].T`` is the matrix); else None."""
    S, d_out, d_in = W.shape
    root = t["root"]
    r = root.shape[1]
    mF = (W @ t["mean"][:, None])[..., 0] + b  # (S, d_out)
    Wf = W.reshape(S * d_out, d_in)
    if not isinstance(xp, _Numpy):
        Pc = Wf @ root
        return _concat_last(xp, math.sqrt(n) * mF[:, :, None], Pc.reshape(S, d_out, r)), None
    from scipy.linalg import blas

    P = np.empty((S, d_out, 1 + r))
    P[:, :, 0] = math.sqrt(n) * mF
    if not r:
        return P, None
    if _triangular_maps(W):
        top = d_out - d_in
        M = np.empty((S, d_in, d_in))
        P[:, :top, 1:] = 0.0
        for s in range(S):
            _lower_product(W[s, top:], t["np"]["lower"], M[s].T)
            P[s, top:, 1:] = M[s].T[:, :r]
        return P, M
    # [Pc, 0]^T = [root, 0]^T Wf^T: Fortran-ordered (d_in, S d_out) operands, i.e. the
    # C-ordered W and a C-ordered (S d_out, d_in) result, with no transposed copies.
    PT = blas.dtrmm(1.0, t["np"]["lower"], Wf.T, side=0, lower=1, trans_a=1)
    P[:, :, 1:] = PT[:r].T.reshape(S, d_out, r)
    return P, None


def _logme_dense(xp: Any, t: dict[str, Any], P: Any, n: int) -> np.ndarray:
    """LogME from ``eigh(P^T P)`` (the torch path, and 1 x 1 Grams): the non-zero eigenvalues of
    ``F^T F`` and the targets' projections ``Q^T z`` on F's left singular vectors."""
    sigma, Q = xp.eigh(xp.T(P) @ P)
    vals, bad = _logme_batch(xp, sigma, None, xp.T(Q) @ t["z"], t["y_sq"], n, max(n, int(P.shape[1])))
    out = np.array(xp.to_numpy(vals), dtype=np.float64)
    out[xp.to_numpy(bad)] = np.nan
    return out


# ---------------------------------------------------------------------- the tridiagonal route (numpy)
@dataclass
class _Tridiagonal:
    """``P_s^T P_s = U_s T_s U_s^T`` for a chunk: T's diagonal (S, k) and off-diagonal (S, k-1),
    ``zh = U^T z`` (S, k, t), ``ok`` (S,) False where LAPACK failed (non-finite P), and, when
    asked for, the H-score's row norms ``row_sq`` (S, n) (NaN rows: not computed)."""

    diag: np.ndarray
    off: np.ndarray
    zh: np.ndarray
    ok: np.ndarray
    row_sq: np.ndarray | None = None


def _tridiagonalise(P: np.ndarray, z: np.ndarray, rows: np.ndarray | None = None,
                    M: np.ndarray | None = None) -> _Tridiagonal:
    """Per source: ``A = P^T P`` (BLAS syrk, lower triangle), its tridiagonal reduction (LAPACK
    sytrd, no eigenvectors: 4/3 k^3 flops, a third of an eigendecomposition's) and ``U^T z``
    (ormqr). Lower sytrd leaves row and column 0 of A in place (``U = diag(1, U_2)``), so
    ``T[1:, 1:] = U_2^T (Pc^T Pc) U_2`` is a reduction of the centred block as well.

    With ``rows`` (``Hc``, (n, r)), also the H-score's ``||Fc_i||^2 = h_i^T (Pc^T Pc) h_i =
    ||L^T h_i||^2`` from the Cholesky factor L of that block (potrf, r^3/3) and one triangular
    product ``Hc L`` (trmm, n r^2 flops: half the (n, d) x (d, d) product of the rows); where
    the block is not positive definite (a rank-deficient map) the row stays NaN, and with
    d_out < r, ``row_sq`` is None.

    With ``M`` (canonical maps, ``_project``): ``Pc^T Pc = M_s^T M_s`` by LAPACK lauum instead of
    the syrk, and, on a full-rank target (``M_s`` square), ``||Fc_i||^2 = ||M_s h_i||^2`` by one
    trmm, without the Cholesky factor."""
    from scipy.linalg import blas, lapack

    S, d_out, k = P.shape
    tc = z.shape[1]
    diag = np.zeros((S, k))
    off = np.zeros((S, k - 1))
    zh = np.zeros((S, k, tc))
    ok = np.ones(S, dtype=bool)
    # Pc^T Pc (r x r) has rank <= d_out: no Cholesky factor when d_out < r (the GEMM is cheaper then)
    row_sq = None if rows is None or d_out < k - 1 else np.full((S, rows.shape[0]), np.nan)
    square = M is not None and M.shape[1] == k - 1  # M_s = Pc on the bottom rows: full-rank target
    for s in range(S):  # W and b are finite: P is, short of overflow (caught below on T)
        if M is None:
            a = blas.dsyrk(1.0, P[s].T, lower=1)  # P[s].T is Fortran-ordered: no copy
        else:  # canonical map: Pc^T Pc = M_s^T M_s (lauum); the bias row and column by hand
            if square and row_sq is not None and rows is not None:  # ||Fc_i|| = ||M_s h_i||
                MH = blas.dtrmm(1.0, M[s].T, rows.T, side=0, lower=1)
                row_sq[s] = np.einsum("ji,ji->i", MH, MH)
            a = np.zeros((k, k), order="F")
            a[1:, 1:] = lapack.dlauum(M[s].T, lower=1, overwrite_c=1)[0][:k - 1, :k - 1]
            a[1:, 0] = P[s, :, 1:].T @ P[s, :, 0]
            a[0, 0] = P[s, :, 0] @ P[s, :, 0]
        if row_sq is not None and rows is not None and not square:
            low, info = lapack.dpotrf(a[1:, 1:], lower=1, clean=0)
            if info == 0:  # (Hc L)^T = L^T Hc^T: Fortran-ordered (r, n), columns = rows of Hc L
                HL = blas.dtrmm(1.0, low, rows.T, side=0, lower=1, trans_a=1)
                row_sq[s] = np.einsum("ji,ji->i", HL, HL)
        c, dd, e, tau, info = lapack.dsytrd(a, lower=1, lwork=_SYTRD_BLOCK * k, overwrite_a=1)
        if info != 0:
            ok[s] = False
            continue
        diag[s], off[s] = dd, e
        zh[s, 0] = z[0]
        # Minimal workspace: unblocked application, faster than blocked for t << k columns.
        zh[s, 1:] = lapack.dormqr(b"L", b"T", c[1:, :-1], tau, z[1:], lwork=max(1, tc))[0]
    return _Tridiagonal(diag, off, zh, ok & np.isfinite(diag).all(axis=1) & np.isfinite(off).all(axis=1), row_sq)


def _stacked(a: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """m tridiagonal matrices (rows of a (m, k), off (m, k-1)) as one block-diagonal tridiagonal
    matrix of size m k (zero couplings between blocks), for one LAPACK call over all."""
    m, k = a.shape
    e = np.zeros((m, k))
    e[:, :-1] = off
    return np.ascontiguousarray(a).ravel(), e.ravel()[:-1]


def _positive_definite(a: np.ndarray, off: np.ndarray) -> np.ndarray:
    """(m,) True where the tridiagonal matrix (a_j, off_j) is positive definite (every LDL^T
    pivot > 0: LAPACK pttrf, restarted after the block of each failed pivot)."""
    from scipy.linalg import lapack

    m, k = a.shape
    d, e = _stacked(a, off)
    ok = np.ones(m, dtype=bool)
    start = 0
    while start < m:
        info = lapack.dpttrf(d[start * k:], e[start * k:])[2]
        if info == 0:
            break
        bad = start + (int(info) - 1) // k
        ok[bad] = False
        start = bad + 1
    return ok


def _tridiagonal_solve(a: np.ndarray, off: np.ndarray, rhs: np.ndarray | None, *, inverse_trace: bool = False) -> Any:
    """For m positive definite tridiagonal systems (rows of a (m, k), off (m, k-1); rhs (m, k, c)):
    the solutions x (m, k, c) (None without rhs), ``log det`` (m,) and, with ``inverse_trace``,
    ``tr(A^-1)`` (m,).

    LAPACK pttrf / pttrs on the block-diagonal stack (one call each, O(m k)). The diagonal of
    the inverse comes from the forward pivots p and the backward pivots q (pttrf of the
    reversed matrix): ``(A^-1)_jj = 1 / (p_j + q_j - a_j)``. Raises ``np.linalg.LinAlgError``
    if a pivot is not positive."""
    from scipy.linalg import lapack

    m, k = a.shape
    d, e = _stacked(a, off)
    p, lo, info = lapack.dpttrf(d, e)
    if info != 0:
        raise np.linalg.LinAlgError("tridiagonal matrix not positive definite")
    x = None if rhs is None else lapack.dpttrs(p, lo, rhs.reshape(m * k, -1))[0].reshape(rhs.shape)
    p = p.reshape(m, k)
    logdet = np.log(p).sum(axis=1)
    if not inverse_trace:
        return x, logdet, None
    q, _, info = lapack.dpttrf(d[::-1], e[::-1])
    if info != 0:
        raise np.linalg.LinAlgError("tridiagonal matrix not positive definite")
    trinv = (1.0 / (p + q[::-1].reshape(m, k) - a)).sum(axis=1)
    return x, logdet, trinv


def _tridiagonal_times(diag: np.ndarray, off: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``T v`` for tridiagonal T (diag (m, k), off (m, k-1)) and v (m, k, c)."""
    out: np.ndarray = diag[:, :, None] * v
    out[:, :-1] += off[:, :, None] * v[:, 1:]
    out[:, 1:] += off[:, :, None] * v[:, :-1]
    return out


def _logme_tridiagonal(P: np.ndarray, z: np.ndarray, y_sq: np.ndarray, n: int, size: int,
                       tri: _Tridiagonal | None = None) -> np.ndarray:
    """LogME of each source from ``A = P^T P`` (P: (S, d_out, k)) and the target's ``z`` (k, t).

    The fixed point reads A and the targets only through, for each column's t = alpha / beta,
    ``gamma = tr(A (A + tI)^-1)``, ``log det(A + tI)``, ``||r||^2`` and ``r^T A r`` with
    ``r = (A + tI)^-1 z``. With the tridiagonal reduction ``A = U T U^T`` (``_tridiagonalise``)
    and ``z' = U^T z``, all four come from the LDL^T factorisations of ``T + tI`` from both
    ends: O(k) per column and iteration, one LAPACK call over all sources and columns. The
    numerical-rank cut of LogME is checked by inertia (``T - tau I`` positive definite, tau =
    Gershgorin bound * max(n, d) * eps >= the cut); sources that fail it (a rank-deficient
    map) go through ``eigh``.
    """
    if tri is None:
        tri = _tridiagonalise(P, z)
    S, k = tri.diag.shape
    absoff = np.abs(tri.off)
    gersh = tri.diag + np.pad(absoff, ((0, 0), (1, 0))) + np.pad(absoff, ((0, 0), (0, 1)))
    cut = gersh.max(axis=1) * size * np.finfo(np.float64).eps
    ok = tri.ok & (cut > 0)
    if ok.any():  # T - cut I positive definite <=> no eigenvalue of A below the cut
        i = np.nonzero(ok)[0]
        ok[i] = _positive_definite(tri.diag[i] - cut[i, None], tri.off[i])
    out = np.full(S, np.nan)
    y_sq = np.asarray(y_sq, dtype=np.float64)
    if ok.any():
        i = np.nonzero(ok)[0]
        res_x2 = y_sq - np.einsum("jc,jc->c", z, z)
        try:
            out[i] = _fixed_point_tridiagonal(tri.diag[i], tri.off[i], tri.zh[i], res_x2, n)
        except np.linalg.LinAlgError:  # not expected after the inertia check; eigh decides
            ok[i] = False
    rest = np.nonzero(~ok)[0]
    if rest.size:
        good = rest[np.isfinite(P[rest]).reshape(rest.size, -1).all(axis=1)]
        if good.size:
            sigma, Q = np.linalg.eigh(np.swapaxes(P[good], 1, 2) @ P[good])
            vals, bad = _logme_batch(_Numpy(), sigma, None, np.swapaxes(Q, 1, 2) @ z, y_sq, n, size)
            vals = np.array(vals, dtype=np.float64)
            vals[bad] = np.nan
            out[good] = vals
    return out


def _fixed_point_tridiagonal(diag: np.ndarray, off: np.ndarray, zh: np.ndarray, res_x2: np.ndarray,
                             n: int) -> np.ndarray:
    """``estimators.logme._fixed_point_evidence`` (all k directions kept) from the tridiagonal
    form: diag (S, k), off (S, k-1), zh = U^T z (S, k, t), res_x2 (t,) the targets' energy
    outside the column space. Every (source, column) pair is one system; each iteration
    factors the still-active ones at once. Returns the mean evidence / n, (S,)."""
    S, k, tc = zh.shape
    D = np.repeat(diag, tc, axis=0)  # system j = (source j // tc, target column j % tc)
    E = np.repeat(off, tc, axis=0)
    Z = np.ascontiguousarray(zh.transpose(0, 2, 1)).reshape(S * tc, k, 1)
    rx2 = np.tile(np.asarray(res_x2, dtype=np.float64), S)
    K = S * tc
    alpha, beta = np.ones(K), np.ones(K)
    m2, res2 = np.zeros(K), np.zeros(K)
    active = np.ones(K, dtype=bool)
    for _ in range(_MAX_ITER):
        idx = np.nonzero(active)[0]
        t = alpha[idx] / beta[idx]
        r, _, trinv = _tridiagonal_solve(D[idx] + t[:, None], E[idx], Z[idx], inverse_trace=True)
        gamma = k - t * trinv  # sum sigma / (sigma + t)
        m2_new = np.einsum("jk,jk->j", r[:, :, 0], _tridiagonal_times(D[idx], E[idx], r)[:, :, 0])
        res2_new = t * t * np.einsum("jk,jk->j", r[:, :, 0], r[:, :, 0]) + rx2[idx]
        alpha_new = gamma / (m2_new + _EPS)
        beta_new = (n - gamma) / (res2_new + _EPS)
        alpha[idx], beta[idx], m2[idx], res2[idx] = alpha_new, beta_new, m2_new, res2_new
        active[idx] = ~(np.abs(alpha_new / beta_new - t) / t <= _RTOL)
        if not active.any():
            break
    # sum_i log(alpha + beta sigma_i) = k log(beta) + log det(T + (alpha / beta) I)
    logdet = k * np.log(beta) + _tridiagonal_solve(D + (alpha / beta)[:, None], E, None)[1]
    evidence = (k / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - 0.5 * logdet
                - beta / 2.0 * res2 - alpha / 2.0 * m2 - n / 2.0 * math.log(2 * math.pi)) / n
    return np.asarray(evidence.reshape(S, tc).mean(1), dtype=np.float64)


# ---------------------------------------------------------------------- shrinkage H-score
def _row_norms_sq(xp: Any, Xc: Any, W: Any) -> Any:
    """``||Fc_i||^2 = ||W xc_i||^2`` for every target row and source, (S, n): one
    (n, d_in) x (d_in, s d_out) product per block of s sources (blocks of <= 64 MiB)."""
    S, d_out, d_in = W.shape
    n = Xc.shape[0]
    step = max(1, (64 * 2**20) // (8 * n * d_out))
    parts = []
    for s0 in range(0, S, step):
        Wb = W[s0:s0 + step]
        s = Wb.shape[0]
        Fc = (Xc @ xp.T(Wb.reshape(s * d_out, d_in))).reshape(n, s, d_out)
        parts.append(xp.einsum("isj,isj->si", Fc, Fc))
    return parts[0] if len(parts) == 1 else _concat_rows(xp, parts)


def _concat_rows(xp: Any, parts: list[Any]) -> Any:
    if isinstance(xp, _Numpy):
        return np.concatenate(parts, axis=0)
    return xp.torch.cat(parts, dim=0)


def _shrinkage(xp: Any, trace: Any, s_fro2: Any, row_sq: Any, n: int, d: int) -> tuple[Any, Any]:
    """Ledoit-Wolf shrinkage per source (``estimators.hscore_shrinkage.ledoit_wolf``) from
    ``tr(S)``, ``||S||_F^2`` (S = covariance of F, ddof 0) and the row norms (S, n)."""
    mu = trace / d
    bb = ((row_sq * row_sq).sum(1) / n - s_fro2) / (d * n)
    delta = (s_fro2 - 2.0 * mu * trace + d * mu * mu) / d
    bb = xp.where(bb < delta, bb, delta)
    ok = (bb > 0) & (delta > 0)
    shrink = xp.where(ok, bb / xp.where(delta > 0, delta, 1.0), 0.0)
    if d == 1:
        shrink = shrink * 0.0
    return shrink, mu


def _hscore_shrinkage_chunk(xp: Any, t: Any, st: Any, W: Any, P: Any, tri: _Tridiagonal | None) -> np.ndarray:
    """Shrinkage H-score ``tr(Sigma_LW^+ B^T B)`` of a chunk.

    ``Sigma_LW = a G + c I`` with ``G = Pc Pc^T = W Sc W^T``, ``a = (1 - s) / n``, ``c = s mu``;
    the rows of B are ``scale_c W s_c = scale_c Pc v_c`` with ``v_c = root^+ s_c``, the class
    rows of ``z[1:]``. When every eigenvalue of Sigma_LW passes the pseudo-inverse's cut-off
    (``estimators.hscore.trace_pinv_product``: guaranteed when ``c >= 2 RCOND tr(S)``, as the
    eigenvalues lie in [c, tr(S)]), the pseudo-inverse is the inverse and, by
    ``Pc^T (a Pc Pc^T + cI)^-1 Pc = (a M + cI)^-1 M`` with ``M = Pc^T Pc = U_2 T_c U_2^T``:
    ``H = sum_c scale_c^2 v'_c^T T_c (a T_c + cI)^-1 v'_c``, ``v' = U_2^T v`` -- one tridiagonal
    solve per source on LogME's reduction (numpy). Otherwise (and on the torch path) G is formed
    and ``eigh`` applies the cut-off as the reference does. ``tr(S)`` and ``||S||_F^2`` come
    from T_c (orthogonal invariants); the fourth moment from the rows (``_tridiagonalise``'s
    Cholesky route, else ``_row_norms_sq``).
    """
    from .hscore import RCOND

    n = st.n
    S, d, _ = P.shape  # d = d_out
    if tri is not None and tri.row_sq is not None:
        row_sq = tri.row_sq
        missing = np.nonzero(np.isnan(row_sq).any(axis=1))[0]
        if missing.size:
            row_sq[missing] = _row_norms_sq(xp, t["Xc"], W[missing])
    else:
        row_sq = _row_norms_sq(xp, t["Xc"], W)
    counts = t["counts"]
    out = np.full(S, np.nan)
    dense = np.ones(S, dtype=bool)
    if tri is not None:
        Td, To, V = tri.diag[:, 1:], tri.off[:, 1:], tri.zh[:, 1:, :]
        trace = Td.sum(1) / n
        s_fro2 = ((Td * Td).sum(1) + 2.0 * (To * To).sum(1)) / (n * n)
        shrink, mu = _shrinkage(xp, trace, s_fro2, row_sq, n, d)
        fast = tri.ok & (shrink * mu >= 2.02 * RCOND * trace) & (trace > 0)
        if fast.any():
            i = np.nonzero(fast)[0]
            a = ((1.0 - shrink[i]) / n)[:, None]
            try:
                x = _tridiagonal_solve(a * Td[i] + (shrink[i] * mu[i])[:, None], a * To[i], V[i])[0]
            except np.linalg.LinAlgError:
                x = None
            if x is not None:
                scale2 = (1.0 - shrink[i])[:, None] / ((n - 1) * counts)[None, :]  # (s, C)
                quad = (_tridiagonal_times(Td[i], To[i], V[i]) * x).sum(1)  # (s, C)
                out[i] = (scale2 * quad).sum(1)
                dense[i] = False
    if dense.any():
        i = np.nonzero(dense)[0]
        ix = xp.index(i)
        Pc = P[ix][:, :, 1:]
        if isinstance(xp, _Numpy):  # 2-D p @ p.T is BLAS syrk (half a GEMM)
            G = np.stack([p @ p.T for p in Pc])  # W Sc W^T
        else:
            G = Pc @ xp.T(Pc)
        out[i] = _hscore_dense(xp, t, st, W[ix], G, row_sq[ix], RCOND)
    return out


def _hscore_dense(xp: Any, t: Any, st: Any, W: Any, G: Any, row_sq: Any, rcond: float) -> np.ndarray:
    """The shrinkage H-score from the d_out x d_out ``G = W Sc W^T`` of each source: a linear
    solve where every eigenvalue of Sigma_LW passes the cut-off, else eigh with the reference's
    pseudo-inverse weights (``trace_pinv_product``)."""
    n = st.n
    d = G.shape[-1]
    S_F = G / n  # covariance of F, ddof 0
    trace = xp.diag(S_F).sum(1)
    s_fro2 = (S_F * S_F).sum(2).sum(1)
    shrink, mu = _shrinkage(xp, trace, s_fro2, row_sq, n, d)
    cov = (1.0 - shrink)[:, None, None] * S_F + (shrink * mu)[:, None, None] * xp.eye(d)
    scale = xp.sqrt((1.0 - shrink)[:, None] / ((n - 1) * t["counts"])[None, :])  # (S, C)
    between = (t["sums"] @ xp.T(W)) * scale[:, :, None]  # (S, C, d): scale_c W s_c
    solvable = xp.to_numpy((shrink * mu >= 2.02 * rcond * trace) & (trace > 0))
    out = np.empty(int(G.shape[0]))
    if solvable.any():
        ix = xp.index(np.nonzero(solvable)[0])
        B = between[ix]
        Z = xp.solve(cov[ix], xp.T(B))  # (s, d, C)
        out[solvable] = xp.to_numpy((B * xp.T(Z)).sum(2).sum(1))
    if (~solvable).any():
        ix = xp.index(np.nonzero(~solvable)[0])
        lam, V = xp.eigh(cov[ix])
        top = xp.amax(xp.abs(lam), 1)[:, None]
        floor = rcond * xp.where(top > 0, top, 1.0)
        # trace_pinv_product's weights: 1 above 2 rcond top, 0 below rcond top, log2 ramp between
        w = xp.log(xp.where(lam > floor, lam, floor) / floor) / math.log(2.0)
        w = xp.where(w < 1.0, w, 1.0)
        proj = between[ix] @ V  # (s, C, d)
        contrib = w * (proj * proj).sum(1) / xp.where(w > 0, lam, 1.0)
        out[~solvable] = xp.to_numpy(xp.where(top > 0, contrib, 0.0).sum(1))
    return out


def _etran_lda_chunk(xp: Any, t: Any, st: Any, W: Any, b: Any) -> Any:
    """ETran-LDA of a chunk: logits ``Xc A_c + const_c`` (``A_c = W^T mu_c^F``), one
    (n, d_in) x (d_in, S C) product; O(n d C + C d^2) per source."""
    n = st.n
    means = t["sums"] / t["counts"][:, None] + t["mean"][None, :]  # raw class means of X (C, d_in)
    S, d_out, d_in = W.shape
    muF = xp.T((W.reshape(S * d_out, d_in) @ xp.T(means)).reshape(S, d_out, -1)) + b[:, None, :]  # (S, C, d_out)
    A = muF @ W  # (S, C, d_in): A_c = W^T mu_c^F
    const = ((A * t["mean"]).sum(2) + (muF * b[:, None, :]).sum(2)
             - 0.5 * (muF * muF).sum(2) + t["log_prior"][None, :])  # (S, C)
    C = A.shape[1]
    logits = (t["Xc"] @ xp.T(A.reshape(S * C, d_in))).reshape(n, S, C) + const[None, :, :]  # (n, S, C)
    lse = xp.logsumexp(logits, 2)
    true = logits[t["rows"], :, t["labels"]]  # (n, S)
    return xp.to_numpy(xp.exp(true - lse).sum(0) / n)


# ---------------------------------------------------------------------- two-stage ranking
def logme_lowrank(stats: TargetStats, esms: Any, *, rank: int = 64, bias: Any = None, device: Any = None,
                  chunk_size: int | None = None, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """A cheap stand-in for ESM-LogME: LogME of the target truncated to its top ``rank``
    principal directions, mapped through each ESM.

    With ``Sc = V diag(l) V^T`` and ``V_r`` its top-r eigenvectors, the truncated target
    ``X_r = m + Xc V_r V_r^T`` maps to ``F_r`` with ``F_r^T F_r = Z Z^T``,
    ``Z = [W V_r diag(l_r)^(1/2), sqrt(n) m_F]`` (d_out x (r+1)). LogME (same fixed point and
    rank handling as ``estimators.logme``) then needs only the (r+1) x (r+1) ``Z^T Z``: per source
    O(d^2 r + d r^2 + r^3) instead of O(d^3). Not equal to ESM-LogME; used to shortlist sources
    (``rank_two_stage``). Returns (S,), higher is better; NaN where LogME is undefined.
    """
    if int(rank) != rank or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank}")
    W, b = _stack_input(stats, esms, bias)
    S, d_out, d_in = W.shape
    r = int(min(rank, d_in))
    if "scatter_eigh" not in stats._derived:  # once per target, not once per chunk of sources
        stats._derived["scatter_eigh"] = np.linalg.eigh(stats.scatter)
    lam, V = stats._derived["scatter_eigh"]
    Vr = V[:, -r:]
    xp = _backend(device)
    root = xp.asarray(Vr * np.sqrt(np.clip(lam[-r:], 0.0, None)))
    xcy, ysum, y_sq = stats.label_moments()
    proj_y = Vr @ (Vr.T @ xcy)
    proj_y, ysum, y_sq, mean = xp.asarray(proj_y), xp.asarray(ysum), xp.asarray(y_sq), xp.asarray(stats.mean)
    n = stats.n
    chunk = int(chunk_size or max(1, min(512, _CHUNK_BYTES // (8 * 3 * d_out * max(d_in, 1)))))
    out = np.empty(S)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for start in range(0, S, chunk):
            stop = min(S, start + chunk)
            Wc, bc = xp.asarray(W[start:stop]), xp.asarray(b[start:stop])
            mF = (Wc @ mean[:, None])[..., 0] + bc
            A = (Wc.reshape((stop - start) * d_out, d_in) @ root).reshape(stop - start, d_out, r)
            Z = _concat_last(xp, A, math.sqrt(n) * mF[:, :, None])
            FtY = Wc @ proj_y + mF[:, :, None] * ysum[None, None, :]
            sigma, Q = xp.eigh(xp.T(Z) @ Z)
            top = sigma[:, -1:]
            keep = sigma > top * max(n, d_out) * np.finfo(np.float64).eps
            x = (xp.T(Q) @ (xp.T(Z) @ FtY)) / xp.where(keep, sigma, 1.0)[:, :, None]
            vals, bad = _logme_batch(xp, sigma, None, x, y_sq, n, max(n, d_out))
            vals = xp.to_numpy(vals).copy()
            vals[xp.to_numpy(bad)] = np.nan
            out[start:stop] = vals
            if progress is not None:
                progress(stop, S)
    out[~np.isfinite(out)] = np.nan
    return out


def _concat_last(xp: Any, a: Any, b: Any) -> Any:
    if isinstance(xp, _Numpy):
        return np.concatenate([a, b], axis=2)
    return xp.torch.cat([a, b], dim=2)


def _zscores(v: np.ndarray) -> np.ndarray:
    from .ranking import zscores

    v = np.where(np.isfinite(v), v, np.nanmin(v) if np.isfinite(v).any() else 0.0)
    return zscores(v)


def combine_shortlist(top: np.ndarray, sample: np.ndarray, n_rest: int, *,
                      lda_all: np.ndarray | None = None) -> np.ndarray:
    """The default combination of the exact trio (columns in ``SUPPORTED`` order) for the
    shortlisted sources ``top`` (m, 3), normalised as over the whole catalogue.

    The exhaustive default z-scores each estimator over all S = m + ``n_rest`` sources. Here its
    catalogue mean and standard deviation are estimated by strata: the m shortlisted values are
    known, the other ``n_rest`` are represented by ``sample`` (k, 3), exact scores of sources
    drawn at random from them (ETran-LDA: ``lda_all``, its value for every source, when given).
    Exact when ``n_rest`` is 0. Clipped z-scores (+-3) are averaged with
    ``estimators.ranking.DEFAULT_WEIGHTS`` as ``rank_candidates`` does. Returns (m,); a column
    with a non-finite shortlisted value or nothing to normalise by is left out."""
    from .ranking import DEFAULT_WEIGHTS

    top = np.asarray(top, dtype=np.float64)
    sample = np.asarray(sample, dtype=np.float64).reshape(-1, top.shape[1])
    m = top.shape[0]
    combined = np.zeros(m)
    wsum = 0.0
    for j, e in enumerate(SUPPORTED):
        p = e[len("esm_"):]
        col = top[:, j]
        if not np.isfinite(col).all():
            continue
        if p == "etran_lda" and lda_all is not None:
            pop = np.asarray(lda_all, dtype=np.float64)
            pop = pop[np.isfinite(pop)]
            if pop.size < 2:
                continue
            mu, var = float(pop.mean()), float(pop.var())
        else:
            rest = sample[:, j][np.isfinite(sample[:, j])]
            if n_rest > 0 and rest.size == 0:
                continue
            w_rest = float(n_rest) if rest.size else 0.0
            mean_r = float(rest.mean()) if rest.size else 0.0
            sq_r = float((rest * rest).mean()) if rest.size else 0.0
            total = m + w_rest
            mu = (float(col.sum()) + w_rest * mean_r) / total
            var = max((float((col * col).sum()) + w_rest * sq_r) / total - mu * mu, 0.0)
        sd = math.sqrt(var)
        scale = max(1.0, float(np.abs(col).max()), abs(mu))
        z = np.zeros_like(col) if sd <= 1e-12 * scale else np.clip((col - mu) / sd, -3.0, 3.0)
        w = DEFAULT_WEIGHTS.get(p, 1.0)
        combined += w * z
        wsum += w
    if wsum <= 0:
        raise ValueError("no estimator of the default could score the shortlisted sources")
    return combined / wsum


def rank_two_stage(stats: TargetStats, esms: Any, names: Sequence[str] | None = None, *, shortlist: int = 200,
                   calibration: int = 64, rank: int = 64, seed: int = 0, bias: Any = None, device: Any = None,
                   chunk_size: int = 256, progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Rank many sources for one target: a cheap first stage over all, the default on the best.

    Stage 1 scores every source with ``logme_lowrank`` (rank ``rank``) and the exact ETran-LDA
    (O(n d C) per source), combined as the default combines (mean of z-scores). Stage 2 scores
    the ``shortlist`` best, plus ``calibration`` sources drawn at random (seeded) from the rest,
    with the exact default trio (``score_many``) and combines them with ``combine_shortlist``
    (catalogue-wide means and spreads estimated by strata: shortlist known, rest sampled). Cost: O(S (d^2 r + n d C)) +
    O((shortlist + calibration) d^3).

    esms: as ``score_many`` (a sequence of ESMs, or stacked weights with ``bias``), or a
        callable ``load(indices) -> (W (k, d_out, d_in), b (k, d_out))`` with ``names`` giving
        the number of sources, so a catalogue larger than memory is read ``chunk_size`` at a time.
    progress: optional ``progress(fraction)``.

    Returns ``{"ranking": [{"name", "score", "scores": {logme, etran_lda, hscore_shrinkage}}]
    for the shortlisted sources (best first), "first_stage": (S,) stage-1 combined scores,
    "shortlist": indices into the sources, "calibration": indices of the random sample,
    "stage1": {"logme_lowrank": (S,), "etran_lda": (S,)}}``.
    """
    if not isinstance(stats, TargetStats):
        raise ValueError("stats must be a TargetStats (TargetStats.from_data(X, y))")
    if callable(esms):
        if names is None:
            raise ValueError("with a loader function, names= must list the sources")
        S = len(names)

        def load(idx: Any) -> Any:
            W_, b_ = esms(np.asarray(idx))
            return _check_stack(W_, b_, stats.d)
    else:
        W, b = _stack_input(stats, esms, bias)
        S = W.shape[0]

        def load(idx: Any) -> Any:
            return W[idx], b[idx]
    if names is None:
        names = [f"source-{i}" for i in range(S)]
    names = [str(x) for x in names]
    if len(names) != S or len(set(names)) != S or S < 1:
        raise ValueError(f"names must be {S} distinct names, one per ESM")
    for key, val, low in (("shortlist", shortlist, 1), ("calibration", calibration, 0), ("rank", rank, 1),
                          ("chunk_size", chunk_size, 1)):
        if int(val) != val or val < low:
            raise ValueError(f"{key} must be an integer >= {low}, got {val}")
    if stats.regression:
        raise ValueError("rank_two_stage needs class labels (its default includes ETran-LDA and the H-score)")
    report = progress if progress is not None else (lambda frac: None)
    lr = np.empty(S)
    lda = np.empty(S)
    for start in range(0, S, int(chunk_size)):
        idx = np.arange(start, min(S, start + int(chunk_size)))
        Wc, bc = load(idx)
        lr[idx] = logme_lowrank(stats, Wc, rank=rank, bias=bc, device=device)
        lda[idx] = score_many(stats, Wc, ["esm_etran_lda"], bias=bc, device=device)[:, 0]
        report(0.4 * idx[-1] / S)
    first = (_zscores(lr) + _zscores(lda)) / 2.0
    order = np.argsort(-first, kind="stable")
    top = order[: int(min(shortlist, S))]
    rest = order[len(top):]
    rng = np.random.default_rng(seed)
    calib = np.sort(rng.choice(rest, size=int(min(calibration, rest.size)), replace=False)) if rest.size else rest
    both = np.concatenate([top, calib]).astype(np.int64)
    exact = np.empty((both.size, len(SUPPORTED)))
    for start in range(0, both.size, int(chunk_size)):
        part = both[start:start + int(chunk_size)]
        Wc, bc = load(part)
        exact[start:start + part.size] = score_many(stats, Wc, SUPPORTED, bias=bc, device=device)
        report(0.4 + 0.6 * (start + part.size) / both.size)
    plain = [e[len("esm_"):] for e in SUPPORTED]
    combined = combine_shortlist(exact[: len(top)], exact[len(top):], S - len(top), lda_all=lda)
    rows = sorted(range(len(top)), key=lambda i: (-combined[i], names[top[i]]))
    ranking = [{"name": names[top[i]], "score": float(combined[i]),
                "scores": {p: float(exact[i, j]) for j, p in enumerate(plain) if np.isfinite(exact[i, j])}}
               for i in rows]
    return {"ranking": ranking, "first_stage": first, "shortlist": top, "calibration": calib,
            "stage1": {"logme_lowrank": lr, "etran_lda": lda}}


def _stack_input(stats: TargetStats, esms: Any, bias: Any) -> Any:
    if not isinstance(stats, TargetStats):
        raise ValueError("stats must be a TargetStats (TargetStats.from_data(X, y))")
    if isinstance(esms, np.ndarray) or (hasattr(esms, "shape") and hasattr(esms, "ndim")):
        return _check_stack(esms, bias, stats.d)
    if bias is not None:
        raise ValueError("bias= goes with stacked weights; ESM objects carry their own bias")
    return _check_stack(*stack_esms(esms), stats.d)
