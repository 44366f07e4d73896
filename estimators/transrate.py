"""TransRate: coding-rate gain of the features when they are split by class."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._classwise import class_slices
from ._validation import check_features_labels

__all__ = ["transrate", "coding_rate"]


def transrate(X: ArrayLike, y: ArrayLike, *, eps: float = 1e-4) -> float:
    """TransRate (Huang et al., ICML 2022, "Frustratingly easy transferability estimation").

    ``TrR = R(Z, eps) - (1/C) sum_c R(Z_c, eps)`` with Z = X - mean(X), Z_c the rows of class c
    and the coding rate ``R(Z, eps) = 1/2 logdet(I + Z^T Z / (n_Z eps))``; as in
    thuml/Transfer-Learning-Library ``transrate(f, y, eps=1e-4)`` (no per-class re-centring).

    Higher is better. Needs target features ``X`` (n, d) and labels ``y`` (n,). Each log-det is
    taken on the smaller Gram matrix (Sylvester: logdet(I_d + a Z^T Z) = logdet(I_m + a Z Z^T)).
    Cost: O(n d^2 + d^3 + sum_c n_c min(n_c, d)^2 + C min(n_c, d)^3).
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    X, y, C = check_features_labels(X, y)
    Z = X - X.mean(axis=0)
    order, slices = class_slices(y, C)
    Zs = Z[order]
    per_class = sum(coding_rate(Zs[sl], eps) for sl in slices)
    return coding_rate(Z, eps) - per_class / C


def coding_rate(Z: np.ndarray, eps: float) -> float:
    """``1/2 logdet(I + Z^T Z / (m eps))`` for Z (m, d), via Cholesky of the smaller Gram matrix."""
    m, d = Z.shape
    gram = Z @ Z.T if m < d else Z.T @ Z
    gram *= 1.0 / (m * eps)
    gram.flat[:: gram.shape[0] + 1] += 1.0
    try:
        chol = np.linalg.cholesky(gram)  # I + PSD: positive definite, eigenvalues >= 1
    except np.linalg.LinAlgError:  # I lost in rounding next to a huge a * Gram: use LU
        return 0.5 * float(np.linalg.slogdet(gram)[1])
    return float(np.sum(np.log(np.diagonal(chol))))
