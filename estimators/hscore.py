"""H-score: how much of the feature covariance is explained by the class-conditional means."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._classwise import class_sums
from ._validation import check_features_labels

__all__ = ["hscore", "trace_pinv_product", "RCOND"]

#: Relative eigenvalue cut-off of the pseudo-inverse: directions of the covariance whose
#: eigenvalue is below ``RCOND * max |eigenvalue|`` are left out (see ``trace_pinv_product``).
RCOND = 1e-7


def hscore(X: ArrayLike, y: ArrayLike) -> float:
    """H-score (Bao et al., ICIP 2019, "An information-theoretic approach to transferability").

    ``H = tr(cov(X)^+ cov(E[X | y]))``: covariances with ddof = 1 (their scale cancels) and a
    pseudo-inverse through the eigen-decomposition of the float64 scatter matrix with a relative
    cut-off ``RCOND`` = 1e-7 (``trace_pinv_product``). thuml/Transfer-Learning-Library's
    ``h_score`` uses ``np.linalg.pinv(cov, rcond=1e-15)``: the two agree wherever the covariance
    is well conditioned (every eigenvalue above 2e-7 of the largest, as on every conformance
    input), and where it is singular (n <= d: the null space carries no between-class variance).
    They differ only on directions with eigenvalues between 1e-15 and 2e-7 of the largest, whose
    computed eigenvalues carry a relative error of order d * 1e-16 / lambda -- a value that
    depends on the BLAS kernel. With the cut-off, the value is the same on every kernel to
    ~1e-9 relative.

    When n - 1 <= d and the features are in general position, H = C - 1 exactly for every feature
    set (the class means lie in the span of the examples): the score saturates and carries no
    information; prefer ``hscore_shrinkage`` there.

    Higher is better (at most C - 1). Needs target features ``X`` (n, d) and labels ``y`` (n,).
    Cost: O(n d^2 + d^3 + C d^2).
    """
    X, y, C = check_features_labels(X, y)
    Xc = X - X.mean(axis=0)
    sums, counts = class_sums(Xc, y, C)
    # cov(E[X|y]) * (n - 1) = B^T B with rows sqrt(n_c) * (mean_c - mean).
    between = sums / np.sqrt(counts)[:, None]
    return trace_pinv_product(Xc.T @ Xc, between)


def trace_pinv_product(S: np.ndarray, B: np.ndarray, rcond: float = RCOND) -> float:
    """``tr(S^+ B^T B)`` for a symmetric positive semi-definite S (d, d) and B (m, d), via eigh.

    With ``S = V diag(lambda) V^T``: ``sum_j w_j ||B v_j||^2 / lambda_j``, where the weight
    ``w_j`` is 1 for ``lambda_j >= 2 rcond lambda_max``, 0 for ``lambda_j <= rcond lambda_max``,
    and ``log2(lambda_j / (rcond lambda_max))`` in between. Above the ramp this is exactly the
    pseudo-inverse; the ramp makes the value continuous in S, so an eigenvalue computed slightly
    differently (another BLAS kernel) cannot flip a direction in or out. Each direction adds at
    most its share of between-class variance (``||B v||^2 <= lambda`` for a covariance and its
    between-class part), so a kernel's eigenvalue error ``delta`` changes the value by at most
    ``delta / (rcond lambda_max)`` per direction: with ``delta ~ d eps lambda_max`` that is
    below ~1e-9 * d / 400.
    """
    S = np.asarray(S, dtype=np.float64)
    lam, V = np.linalg.eigh(S)
    top = float(np.max(np.abs(lam)))
    if top <= 0.0:
        return 0.0
    floor = rcond * top
    w = np.clip(np.log2(np.maximum(lam, floor) / floor), 0.0, 1.0)
    keep = w > 0
    proj = np.asarray(B, dtype=np.float64) @ V[:, keep]  # (m, k)
    return float(np.sum(w[keep] * np.einsum("ij,ij->j", proj, proj) / lam[keep]))
