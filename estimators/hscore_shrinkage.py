"""Shrinkage H-score: the H-score with a Ledoit-Wolf estimate of the feature covariance."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._classwise import class_sums
from ._validation import check_features_labels
from .hscore import trace_pinv_product

__all__ = ["hscore_shrinkage", "ledoit_wolf"]


def hscore_shrinkage(X: ArrayLike, y: ArrayLike) -> float:
    """Shrinkage H-score (Ibrahim, Ponomareva & Mazumder, ICLR 2023, "Newer is not always better").

    ``H_a = tr(Sigma_LW^-1 (1 - a) cov(E[X | y]))`` with ``Sigma_LW = (1 - a) S + a mu I`` the
    Ledoit-Wolf covariance (S = empirical covariance, ddof = 0; mu = tr(S)/d; a = LW shrinkage),
    as in thuml/Transfer-Learning-Library ``regularized_h_score``.

    The inverse goes through ``estimators.hscore.trace_pinv_product`` (eigh in float64, relative
    eigenvalue cut-off 1e-7); the Ledoit-Wolf matrix's eigenvalues are at least ``a mu``, so the
    cut-off only acts when the shrinkage is nearly 0 and S nearly singular.

    Higher is better. Needs target features ``X`` (n, d) and labels ``y`` (n,); stabler than the
    plain H-score when n is small relative to d. Cost: O(n d^2 + d^3 + C d^2).
    """
    X, y, C = check_features_labels(X, y)
    n, d = X.shape
    Xc = X - X.mean(axis=0)
    cov_lw, shrinkage = ledoit_wolf(Xc)
    sums, counts = class_sums(Xc, y, C)
    # (1 - a) cov(E[X|y]) = B^T B with rows sqrt((1 - a) n_c / (n - 1)) * (mean_c - mean).
    between = sums * np.sqrt((1.0 - shrinkage) / ((n - 1) * counts))[:, None]
    return trace_pinv_product(cov_lw, between)


def ledoit_wolf(Xc: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf (2004) shrunk covariance of centred data Xc (n, d) and its shrinkage in [0, 1].

    The same estimate as ``sklearn.covariance.LedoitWolf``: with S = Xc^T Xc / n and
    mu = tr(S)/d, ``a = min(b, delta) / delta`` where ``delta = ||S - mu I||_F^2 / d`` and
    ``b = (sum_i ||x_i||^4 / n - ||S||_F^2) / (n d)``.
    """
    n, d = Xc.shape
    S = Xc.T @ Xc / n
    if d == 1:
        return S, 0.0
    trace = float(np.trace(S))
    mu = trace / d
    s_fro2 = float(np.sum(S * S))
    row_sq = np.einsum("ij,ij->i", Xc, Xc)
    b = (float(row_sq @ row_sq) / n - s_fro2) / (d * n)
    delta = (s_fro2 - 2.0 * mu * trace + d * mu * mu) / d
    b = min(b, delta)
    # delta = 0 means S is already a multiple of I: every shrinkage gives the same matrix.
    shrinkage = 0.0 if b <= 0 or delta <= 0 else b / delta
    shrunk = (1.0 - shrinkage) * S
    shrunk.flat[:: d + 1] += shrinkage * mu
    return shrunk, float(shrinkage)
