"""H-score: how much of the feature covariance is explained by the class-conditional means."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._classwise import class_sums
from ._validation import check_features_labels

__all__ = ["hscore"]

_RCOND = 1e-15  # pseudo-inverse cut-off relative to the largest |eigenvalue| (np.linalg.pinv's)


def hscore(X: ArrayLike, y: ArrayLike) -> float:
    """H-score (Bao et al., ICIP 2019, "An information-theoretic approach to transferability").

    ``H = tr(cov(X)^+ cov(E[X | y]))``: covariances with ddof = 1 (their scale cancels), the
    pseudo-inverse with relative cut-off 1e-15 as in thuml/Transfer-Learning-Library ``h_score``.

    Higher is better (at most C - 1). Needs target features ``X`` (n, d) and labels ``y`` (n,).
    Cost: O(n d^2 + d^3 + C d^2).
    """
    X, y, C = check_features_labels(X, y)
    Xc = X - X.mean(axis=0)
    sums, counts = class_sums(Xc, y, C)
    # cov(E[X|y]) * (n - 1) = B^T B with rows sqrt(n_c) * (mean_c - mean).
    between = sums / np.sqrt(counts)[:, None]
    return trace_pinv_product(Xc.T @ Xc, between)


def trace_pinv_product(S: np.ndarray, B: np.ndarray, rcond: float = _RCOND) -> float:
    """``tr(S^+ B^T B)`` for a symmetric S (d, d) and B (m, d), through eigh of S.

    Same cut-off as ``np.linalg.pinv(S, rcond)``: eigenvalues with |lambda| <= rcond * max |lambda|
    are dropped (for a symmetric matrix the singular values are |lambda|).
    """
    lam, V = np.linalg.eigh(S)
    keep = np.abs(lam) > rcond * np.max(np.abs(lam))
    proj = B @ V[:, keep]  # (m, k)
    return float(np.sum(np.einsum("ij,ij->j", proj, proj) / lam[keep]))
