"""ESM scores of many sources from one target's sufficient statistics.

An embedding-space map (ESM, Schulte et al., EMNLP 2024) is linear: the target's base-encoder
embeddings ``X`` (n, d_in) become ``F = X W^T + b`` (n, d_out) for a source with map ``(W, b)``.
Every quantity the default ``esm_*`` estimators read from ``F`` is a linear or quadratic
function of ``X``, so it follows from statistics of the target computed once (``TargetStats``)
and the source's ``(W, b)``. With ``m`` the mean of X, ``Xc = X - m``, ``Sc = Xc^T Xc``,
per-class sums ``s_c`` of Xc, counts ``n_c``, and ``m_F = W m + b``:

* **LogME** (``esm_logme``, You et al., JMLR 2022) needs ``F^T F = W Sc W^T + n m_F m_F^T``,
  ``F^T Y`` (class c: ``W s_c + n_c m_F``; float targets: ``W Xc^T Y + m_F 1^T Y``),
  ``||Y||^2`` and n. One symmetric eigendecomposition of the d_out x d_out ``F^T F`` per source,
  then the same fixed point as ``estimators.logme`` (per-column convergence, numerical-rank
  cut ``sigma > sigma_max * max(n, d_out) * eps``). When n < d_out the reference works on the
  n x n Gram matrix ``F F^T`` instead; so does this module (rows needed, n is small then).
* **Shrinkage H-score** (``esm_hscore_shrinkage``, Ibrahim et al., ICLR 2023): the covariance
  of F is ``W Sc W^T / n``; class-mean deviations are ``W s_c``. Its Ledoit-Wolf shrinkage
  also needs ``sum_i ||Fc_i||^4``, a fourth moment of X: that one term is computed from the
  rows, ``||Xc W^T||`` row norms, one (n, d_in) x (d_in, d_out) product per source. The trace
  ``tr(Sigma_LW^+ B^T B)`` is a linear solve when every eigenvalue of ``Sigma_LW`` is above
  the pseudo-inverse cut-off (guaranteed when the shrinkage is positive: the smallest
  eigenvalue is at least ``a * tr(S) / d``), else an eigendecomposition as in the reference.
* **ETran-LDA** (``esm_etran_lda``, Gholami et al., ICCV 2023): the class means of F are
  ``mu_c^F = W mu_c + b``; the logits ``F mu_c^F - ||mu_c^F||^2/2 + log pi_c`` equal
  ``Xc A_c + const_c`` with ``A_c = W^T mu_c^F``: one (n, d_in) x (d_in, C) product per source.
  The softmax is per row, so this term needs the rows; it is O(n d C), small next to d^3.

Cost per source: O(d^3) (two d x d products, one eigendecomposition, one solve) + O(n d^2) for
the H-score's fourth moment + O(n d C) for the LDA logits; nothing of the first two terms
depends on n. ``TargetStats.from_data`` costs O(n d^2) once per target. Values equal
``estimators.score("esm_<name>", X, y, esm=...)`` up to floating-point rounding.

``score_many`` runs in numpy (batched ``np.linalg.eigh`` over a chunk of sources) or, with
``device=`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``), in torch float64 on that device.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._classwise import class_sums
from ._validation import check_features, check_features_labels, check_targets
from .logme import _EPS, _MAX_ITER, _RTOL

__all__ = ["TargetStats", "score_many", "stack_esms", "SUPPORTED", "logme_lowrank", "rank_two_stage",
           "combine_shortlist"]

#: The estimators ``score_many`` computes from the statistics (the tasks default).
SUPPORTED = ("esm_logme", "esm_etran_lda", "esm_hscore_shrinkage")
_HSCORE_RCOND = 1e-15  # estimators.hscore's pseudo-inverse cut-off
_SOLVE_MARGIN = 1e3  # the solve is used when the smallest eigenvalue bound is 1e3 x above the cut-off
_CHUNK_BYTES = 256 * 2**20  # work arrays per chunk of sources


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
    _derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def regression(self) -> bool:
        return self.targets is not None

    @property
    def n_classes(self) -> int:
        return 0 if self.counts is None else int(self.counts.shape[0])

    @classmethod
    def from_data(cls, X, y, *, regression: bool = False) -> TargetStats:
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


# ---------------------------------------------------------------------- ESM stacks
def stack_esms(esms: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """``(W (S, d_out, d_in), b (S, d_out))`` float64 from ESMs (objects, paths or
    ``{"weight", "bias"}`` dicts, as ``estimators.esm`` accepts); all must share their shapes."""
    from .esm import _as_esm

    maps = [_as_esm(e) for e in esms]
    if not maps:
        raise ValueError("no ESMs given")
    shapes = {m.weight.shape for m in maps}
    if len(shapes) != 1:
        raise ValueError(f"the ESMs have different shapes {sorted(shapes)}; score each base encoder separately")
    return np.stack([m.weight for m in maps]), np.stack([m.bias for m in maps])


def _check_stack(W, b, d_in: int) -> tuple[np.ndarray, np.ndarray]:
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


# ---------------------------------------------------------------------- array back-ends
class _Numpy:
    float = np.float64

    def asarray(self, a):
        return np.asarray(a, dtype=np.float64)

    def to_numpy(self, a):
        return np.asarray(a)

    def T(self, a):
        return np.swapaxes(a, -1, -2)

    def eigh(self, a):
        return np.linalg.eigh(a)

    def solve(self, a, b):
        return np.linalg.solve(a, b)

    def eye(self, d):
        return np.eye(d)

    def diag(self, a):
        return np.diagonal(a, axis1=-2, axis2=-1)

    def amax(self, a, axis):
        return a.max(axis=axis)

    def where(self, c, a, b):
        return np.where(c, a, b)

    def logsumexp(self, a, axis):
        top = a.max(axis=axis, keepdims=True)
        return np.log(np.exp(a - top).sum(axis=axis)) + np.squeeze(top, axis)

    def index(self, a):
        return np.asarray(a, dtype=np.int64)

    def fsum(self, a, axis):
        return a.sum(axis=axis, dtype=np.float64)

    log, sqrt, exp, abs = np.log, np.sqrt, np.exp, np.abs


class _Torch:
    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} asked for, but torch sees no CUDA device")
        self.float = torch.float64

    def asarray(self, a):
        return self.torch.as_tensor(np.asarray(a, dtype=np.float64), device=self.device)

    def to_numpy(self, a):
        return a.detach().cpu().numpy()

    def T(self, a):
        return a.transpose(-1, -2)

    def eigh(self, a):
        return self.torch.linalg.eigh(a)

    def solve(self, a, b):
        return self.torch.linalg.solve(a, b)

    def eye(self, d):
        return self.torch.eye(d, dtype=self.float, device=self.device)

    def diag(self, a):
        return self.torch.diagonal(a, dim1=-2, dim2=-1)

    def amax(self, a, axis):
        return a.amax(dim=axis)

    def where(self, c, a, b):
        t = self.torch
        return t.where(c, t.as_tensor(a, dtype=self.float, device=self.device),
                       t.as_tensor(b, dtype=self.float, device=self.device))

    def logsumexp(self, a, axis):
        return self.torch.logsumexp(a, dim=axis)

    def index(self, a):
        return self.torch.as_tensor(np.asarray(a, dtype=np.int64), device=self.device)

    def fsum(self, a, axis):
        return a.sum(dim=axis, dtype=self.float)

    def log(self, a):
        return self.torch.log(a)

    def sqrt(self, a):
        return self.torch.sqrt(a)

    def exp(self, a):
        return self.torch.exp(a)

    def abs(self, a):
        return self.torch.abs(a)


def _backend(device):
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
def _fixed_point(xp, sigma, mask, x2, y_sq, n: int):
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


def _logme_batch(xp, sigma, vecs, P, y_sq, n: int, size: int):
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
def score_many(stats: TargetStats, esms, estimators: Sequence[str] = SUPPORTED, *, bias=None,
               device=None, chunk_size: int | None = None, progress=None) -> np.ndarray:
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
    n = stats.n
    if chunk_size is None:
        per_source = 8 * (4 * d_out * max(d_out, d_in) + 2 * n * max(d_out, n if n < d_out else 0)
                          + n * max(stats.n_classes, 1) * 2)
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


def _prepare(xp, st: TargetStats) -> dict:
    derived = st._derived.get("bases")
    if derived is None:  # once per target (d^3), reused by every call on it; one atomic store
        lam, V = np.linalg.eigh(st.scatter)
        derived = (V * np.sqrt(np.clip(lam, 0.0, None)), _logme_basis(st))  # Sc = root @ root.T
        st._derived["bases"] = derived
    root, (lroot, lz, lysq) = derived
    t = {"mean": xp.asarray(st.mean), "root": xp.asarray(root), "Xc": xp.asarray(st.centred)}
    t.update(lroot=xp.asarray(lroot), lz=xp.asarray(lz), lysq=xp.asarray(lysq))
    if st.regression:
        t["xty"] = xp.asarray(st.xty)
        t["ysum"] = xp.asarray(st.targets.sum(axis=0))
        t["ysq"] = xp.asarray(np.einsum("ij,ij->j", st.targets, st.targets))
        t["Y"] = xp.asarray(st.targets)
    else:
        C = st.n_classes
        t["sums"] = xp.asarray(st.class_sums)
        t["counts"] = xp.asarray(st.counts.astype(np.float64))
        t["labels"] = xp.index(st.labels)
        t["rows"] = xp.index(np.arange(st.n))
        onehot = np.zeros((st.n, C))
        onehot[np.arange(st.n), st.labels] = 1.0
        t["Y"] = xp.asarray(onehot)
        t["log_prior"] = xp.asarray(np.log(st.counts / st.n))
    return t


def _score_chunk(xp, t, st: TargetStats, W, b, ests) -> dict:
    res = {}
    if "esm_logme" in ests:
        res["esm_logme"] = _logme_chunk(xp, t, st, W, b)
    if "esm_hscore_shrinkage" in ests:
        G = _gram(xp, W, t["root"])  # W Sc W^T (S, d_out, d_out)
        res["esm_hscore_shrinkage"] = _hscore_shrinkage_chunk(xp, t, st, xp.T(W), G)
        del G
    if "esm_etran_lda" in ests:
        res["esm_etran_lda"] = _etran_lda_chunk(xp, t, st, W, b)
    return res


def _gram(xp, W, R):
    """``W Sc W^T = (W R)(W R)^T`` with ``Sc = R R^T`` (R from the target, once): one product
    and one symmetric rank-k update per source (numpy's ``P @ P.T`` calls BLAS syrk)."""
    S, d_out, d_in = W.shape
    P = (W.reshape(S * d_out, d_in) @ R).reshape(S, d_out, R.shape[1])
    if isinstance(xp, _Numpy):
        return np.stack([p @ p.T for p in P])
    return P @ xp.T(P)


def _logme_basis(st: TargetStats):
    """Target-side LogME quantities: ``root`` ((d+1), k) and ``z`` (k, t) with
    ``[X, 1]^T [X, 1] = root root^T`` restricted to its k numerically non-null directions
    (``root = B diag(l)^(1/2)``), and ``z = diag(l)^(-1/2) B^T [X, 1]^T Y``."""
    n, d = st.n, st.d
    m = st.mean
    E = np.empty((d + 1, d + 1))
    E[:d, :d] = st.scatter + n * np.outer(m, m)
    E[:d, d] = E[d, :d] = n * m
    E[d, d] = n
    lam, B = np.linalg.eigh((E + E.T) / 2.0)
    keep = lam > lam[-1] * max(n, d + 1) * np.finfo(np.float64).eps
    lam, B = lam[keep], B[:, keep]
    if st.regression:
        XtY = np.vstack([st.xty + np.outer(m, st.targets.sum(axis=0)), st.targets.sum(axis=0)[None, :]])
        y_sq = np.einsum("ij,ij->j", st.targets, st.targets)
    else:
        counts = st.counts.astype(np.float64)
        XtY = np.vstack([st.class_sums.T + np.outer(m, counts), counts[None, :]])
        y_sq = counts
    root = B * np.sqrt(lam)
    z = (B.T @ XtY) / np.sqrt(lam)[:, None]
    return root, z, y_sq


def _logme_chunk(xp, t, st, W, b):
    """ESM-LogME of a chunk of sources.

    With ``[X, 1] = H B^T`` (B: orthonormal basis of the row space, ``H^T H = diag(l)``) and
    ``Waug = [W, b]``, ``F = H (B^T Waug^T)``: the non-zero eigenvalues of ``F^T F`` are those of
    ``A = P^T P`` with ``P = Waug B diag(l)^(1/2)`` (d_out x k), and the projections of the
    targets on F's left singular vectors are ``Q^T z`` for the eigenvectors Q of A (``z``
    target-only, see ``_logme_basis``). A is k x k, k = rank([X, 1]) <= min(n, d + 1); this is
    the reference's n x n route when n < d and its d x d route otherwise, with the same
    numerical-rank cut relative to the largest eigenvalue."""
    n = st.n
    S, d_out, d_in = W.shape
    size = max(n, d_out)
    k = t["lroot"].shape[1]
    Pt = (W.reshape(S * d_out, d_in) @ t["lroot"][:d_in]).reshape(S, d_out, k)
    Pt += b[:, :, None] * t["lroot"][d_in][None, None, :]  # Waug @ root with Waug = [W, b]
    if isinstance(xp, _Numpy) and k >= 2:
        return _logme_tridiagonal(Pt, t["lz"], t["lysq"], n, size)
    A = xp.T(Pt) @ Pt
    sigma, Q = xp.eigh(A)
    vals, bad = _logme_batch(xp, sigma, None, xp.T(Q) @ t["lz"], t["lysq"], n, size)
    out = xp.to_numpy(vals).copy()
    out[xp.to_numpy(bad)] = np.nan
    return out


# ---------------------------------------------------------------------- LogME without eigenvectors
def _logme_tridiagonal(Pt: np.ndarray, z: np.ndarray, y_sq: np.ndarray, n: int, size: int) -> np.ndarray:
    """LogME of each source from ``A = P^T P`` (Pt: (S, d_out, k)) and the target's ``z`` (k, t).

    The fixed point reads A and the targets only through, for each column's t = alpha / beta,
    ``gamma = tr(A (A + tI)^-1)``, ``log det(A + tI)``, ``||r||^2`` and ``r^T A r`` with
    ``r = (A + tI)^-1 z``. With the tridiagonal reduction ``A = U T U^T`` (LAPACK sytrd, no
    eigenvectors) and ``z' = U^T z`` (ormqr), all four come from the LDL^T factorisations of
    ``T + tI`` from both ends (O(k) per column and iteration, vectorised over sources and
    columns): the pivots give the log-determinant and the solve, the two-sided ("twisted")
    pivots the diagonal of the inverse. The numerical-rank cut of LogME is checked by inertia
    (no pivot of ``T - tau I`` negative, tau = Gershgorin bound * max(n, d) * eps >= the cut);
    sources that fail it (a rank-deficient map) go through ``eigh``.
    """
    from scipy.linalg import lapack

    S, _, k = Pt.shape
    tcols = z.shape[1]
    diag = np.empty((S, k))
    off = np.empty((S, k - 1))
    Zh = np.empty((S, k, tcols))
    ok = np.ones(S, dtype=bool)
    lwork = 64 * k
    for s in range(S):
        a = Pt[s].T @ Pt[s]  # BLAS syrk
        c, dd, e, tau, info = lapack.dsytrd(a, lower=1, lwork=lwork, overwrite_a=1)
        if info != 0:
            ok[s] = False
            continue
        diag[s], off[s] = dd, e
        Zh[s, 0] = z[0]
        Zh[s, 1:] = lapack.dormqr(b"L", b"T", c[1:, :-1], tau, z[1:], lwork=lwork)[0]
    absoff = np.abs(off)
    gersh = diag + np.pad(absoff, ((0, 0), (1, 0))) + np.pad(absoff, ((0, 0), (0, 1)))
    cut = gersh.max(axis=1) * size * np.finfo(np.float64).eps
    ok &= np.isfinite(diag).all(axis=1) & (cut > 0)
    if ok.any():  # every pivot of T - cut I positive <=> no eigenvalue of A below the cut
        i = np.nonzero(ok)[0]
        piv = _pivots(np.ascontiguousarray(diag[i].T), np.ascontiguousarray(off[i].T), -cut[i])
        ok[i] = (piv > 0).all(axis=0)
    out = np.full(S, np.nan)
    y_sq = np.asarray(y_sq, dtype=np.float64)
    if ok.any():
        i = np.nonzero(ok)[0]
        res_x2 = y_sq - np.einsum("jc,jc->c", z, z)
        out[i] = _fixed_point_twisted(diag[i], off[i], Zh[i], res_x2, n)
    rest = np.nonzero(~ok)[0]
    if rest.size:
        sigma, Q = np.linalg.eigh(np.stack([Pt[s].T @ Pt[s] for s in rest]))
        vals, bad = _logme_batch(_Numpy(), sigma, None, np.swapaxes(Q, 1, 2) @ z, y_sq, n, size)
        vals = np.array(vals, dtype=np.float64)
        vals[bad] = np.nan
        out[rest] = vals
    return out


def _pivots(D: np.ndarray, E: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """LDL^T pivots of ``T_j + shift_j I`` for the K tridiagonal matrices in the columns of
    D (k, K) and E (k-1, K)."""
    a = D + shift
    p = np.empty_like(a)
    p[0] = a[0]
    E2 = E * E
    for j in range(1, a.shape[0]):
        p[j] = a[j] - E2[j - 1] / p[j - 1]
    return p


def _twisted(D, E, E2, t, Z):
    """For K symmetric positive definite tridiagonal systems ``(T + tI) r = z`` (columns of
    D (k, K), E (k-1, K), E2 = E * E, t (K,), Z (k, K)): the solution r, ``log det(T + tI)``
    and ``tr((T + tI)^-1)`` (from forward pivots p and backward pivots q:
    ``((T + tI)^-1)_jj = 1 / (p_j + q_j - a_j)``)."""
    k = D.shape[0]
    a = D + t
    p = np.empty_like(a)
    y = np.empty_like(a)
    p[0] = a[0]
    y[0] = Z[0]
    for j in range(1, k):
        lj = E[j - 1] / p[j - 1]
        p[j] = a[j] - lj * E[j - 1]
        y[j] = Z[j] - lj * y[j - 1]
    r = np.empty_like(a)
    q = np.empty_like(a)
    r[k - 1] = y[k - 1] / p[k - 1]
    q[k - 1] = a[k - 1]
    for j in range(k - 2, -1, -1):
        r[j] = (y[j] - E[j] * r[j + 1]) / p[j]
        q[j] = a[j] - E2[j] / q[j + 1]
    trinv = (1.0 / (p + q - a)).sum(axis=0)
    return r, np.log(p).sum(axis=0), trinv


def _fixed_point_twisted(diag, off, Zh, res_x2, n: int) -> np.ndarray:
    """``estimators.logme._fixed_point_evidence`` (all k directions kept) from the tridiagonal
    form: diag (S, k), off (S, k-1), Zh = U^T z (S, k, t), res_x2 (t,) the targets' energy
    outside the column space. Returns the mean evidence / n, (S,)."""
    S, k, tc = Zh.shape
    K = S * tc
    # System j = (source j // tc, target column j % tc); row i of every system side by side.
    D = np.ascontiguousarray(np.repeat(diag.T, tc, axis=1))  # (k, K)
    E = np.ascontiguousarray(np.repeat(off.T, tc, axis=1))  # (k-1, K)
    E2 = E * E
    Zk = np.ascontiguousarray(Zh.transpose(1, 0, 2).reshape(k, K))
    rx2 = np.tile(np.asarray(res_x2, dtype=np.float64), S)
    alpha = np.ones(K)
    beta = np.ones(K)
    m2 = np.zeros(K)
    res2 = np.zeros(K)
    active = np.ones(K, dtype=bool)
    for _ in range(_MAX_ITER):
        idx = np.nonzero(active)[0]
        t = alpha[idx] / beta[idx]
        Di, Ei = np.ascontiguousarray(D[:, idx]), np.ascontiguousarray(E[:, idx])
        r, _, trinv = _twisted(Di, Ei, np.ascontiguousarray(E2[:, idx]), t, np.ascontiguousarray(Zk[:, idx]))
        gamma = k - t * trinv  # sum sigma / (sigma + t)
        Tr = Di * r
        Tr[:-1] += Ei * r[1:]
        Tr[1:] += Ei * r[:-1]
        m2_new = np.einsum("jk,jk->k", r, Tr)  # sum sigma x^2 / (sigma + t)^2
        res2_new = t * t * np.einsum("jk,jk->k", r, r) + rx2[idx]  # sum x^2 t^2 / (sigma + t)^2 + rest
        alpha_new = gamma / (m2_new + _EPS)
        beta_new = (n - gamma) / (res2_new + _EPS)
        alpha[idx], beta[idx], m2[idx], res2[idx] = alpha_new, beta_new, m2_new, res2_new
        active[idx] = ~(np.abs(alpha_new / beta_new - t) / t <= _RTOL)
        if not active.any():
            break
    # sum_i log(alpha + beta sigma_i) = k log(beta) + log det(T + (alpha / beta) I)
    logdet = k * np.log(beta) + np.log(_pivots(D, E, alpha / beta)).sum(axis=0)
    evidence = (k / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - 0.5 * logdet
                - beta / 2.0 * res2 - alpha / 2.0 * m2 - n / 2.0 * math.log(2 * math.pi)) / n
    return evidence.reshape(S, tc).mean(1)


def _hscore_shrinkage_chunk(xp, t, st, Wt, G):
    n = st.n
    d = G.shape[-1]
    S_F = G / n  # covariance of F, ddof 0
    S = G.shape[0]
    # The rows, for the fourth moment only: one (n, d_in) x (d_in, S d_out) product.
    Fc = t["Xc"] @ xp.T(xp.T(Wt).reshape(S * d, -1))
    row_sq = xp.T((Fc * Fc).reshape(n, S, d).sum(2))  # (S, n)
    del Fc
    trace = xp.diag(S_F).sum(1)  # (S,)
    mu = trace / d
    s_fro2 = (S_F * S_F).sum(2).sum(1)
    bb = ((row_sq * row_sq).sum(1) / n - s_fro2) / (d * n)
    delta = (s_fro2 - 2.0 * mu * trace + d * mu * mu) / d
    bb = xp.where(bb < delta, bb, delta)
    ok = (bb > 0) & (delta > 0)
    shrink = xp.where(ok, bb / xp.where(delta > 0, delta, 1.0), 0.0)
    if d == 1:
        shrink = shrink * 0.0
    cov = (1.0 - shrink)[:, None, None] * S_F + (shrink * mu)[:, None, None] * xp.eye(d)
    scale = xp.sqrt((1.0 - shrink)[:, None] / ((n - 1) * t["counts"])[None, :])  # (S, C)
    between = (t["sums"] @ Wt) * scale[:, :, None]  # (S, C, d)
    # Every eigenvalue of cov is >= shrink * mu and <= trace: all pass the pinv cut-off when
    # shrink * mu > rcond * trace; then tr(cov^+ B^T B) = tr(B cov^-1 B^T), a linear solve.
    solvable = xp.to_numpy(shrink * mu > _SOLVE_MARGIN * _HSCORE_RCOND * trace)
    out = np.empty(int(G.shape[0]))
    if solvable.any():
        idx = np.nonzero(solvable)[0]
        ix = xp.index(idx)
        B = between[ix]
        Z = xp.solve(cov[ix], xp.T(B))  # (s, d, C)
        out[idx] = xp.to_numpy((B * xp.T(Z)).sum(2).sum(1))
    rest = np.nonzero(~solvable)[0]
    if rest.size:
        ix = xp.index(rest)
        lam, V = xp.eigh(cov[ix])
        top = xp.amax(xp.abs(lam), 1)[:, None]
        keep = xp.abs(lam) > _HSCORE_RCOND * top
        proj = between[ix] @ V  # (s, C, d)
        contrib = (proj * proj).sum(1) / xp.where(keep, lam, 1.0)
        out[rest] = xp.to_numpy(xp.where(keep, contrib, 0.0).sum(1))
    return out


def _etran_lda_chunk(xp, t, st, W, b):
    n = st.n
    means = t["sums"] / t["counts"][:, None] + t["mean"][None, :]  # raw class means of X (C, d_in)
    muF = means @ xp.T(W) + b[:, None, :]  # (S, C, d_out)
    A = muF @ W  # (S, C, d_in): A_c = W^T mu_c^F
    const = ((A * t["mean"]).sum(2) + (muF * b[:, None, :]).sum(2)
             - 0.5 * (muF * muF).sum(2) + t["log_prior"][None, :])  # (S, C)
    S, C, d_in = A.shape
    logits = (t["Xc"] @ xp.T(A.reshape(S * C, d_in))).reshape(n, S, C) + const[None, :, :]  # (n, S, C)
    lse = xp.logsumexp(logits, 2)
    true = logits[t["rows"], :, t["labels"]]  # (n, S)
    return xp.to_numpy(xp.exp(true - lse).sum(0) / n)



# ---------------------------------------------------------------------- two-stage ranking
def logme_lowrank(stats: TargetStats, esms, *, rank: int = 64, bias=None, device=None,
                  chunk_size: int | None = None, progress=None) -> np.ndarray:
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
    lam, V = np.linalg.eigh(stats.scatter)
    Vr = V[:, -r:]
    xp = _backend(device)
    root = xp.asarray(Vr * np.sqrt(np.clip(lam[-r:], 0.0, None)))
    if stats.regression:
        proj_y, ysum, y_sq = Vr @ (Vr.T @ stats.xty), stats.targets.sum(axis=0), np.einsum(
            "ij,ij->j", stats.targets, stats.targets)
    else:
        proj_y, ysum, y_sq = Vr @ (Vr.T @ stats.class_sums.T), stats.counts.astype(np.float64), \
            stats.counts.astype(np.float64)
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


def _concat_last(xp, a, b):
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


def rank_two_stage(stats: TargetStats, esms, names: Sequence[str] | None = None, *, shortlist: int = 200,
                   calibration: int = 64, rank: int = 64, seed: int = 0, bias=None, device=None,
                   chunk_size: int = 256, progress=None) -> dict:
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

        def load(idx):
            return _check_stack(*esms(np.asarray(idx)), stats.d)
    else:
        W, b = _stack_input(stats, esms, bias)
        S = W.shape[0]

        def load(idx):
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


def _stack_input(stats: TargetStats, esms, bias):
    if not isinstance(stats, TargetStats):
        raise ValueError("stats must be a TargetStats (TargetStats.from_data(X, y))")
    if isinstance(esms, np.ndarray) or (hasattr(esms, "shape") and hasattr(esms, "ndim")):
        return _check_stack(esms, bias, stats.d)
    if bias is not None:
        raise ValueError("bias= goes with stacked weights; ESM objects carry their own bias")
    return _check_stack(*stack_esms(esms), stats.d)
