"""LogME: logarithm of the maximum label evidence of a Bayesian linear model on the features."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._classwise import class_sums
from ._validation import check_features, check_features_labels, check_targets

__all__ = ["logme"]

_MAX_ITER = 11  # as in the reference fixed-point loop: "converges after at most 10 steps"
_RTOL = 1e-3  # stop when |t' - t| / t <= 1e-3, t = alpha / beta
_EPS = 1e-5  # denominators' epsilon of the reference fixed point


def logme(X: ArrayLike, y: ArrayLike, *, regression: bool = False) -> float:
    """LogME (You et al., ICML 2021 / JMLR 2022, "Ranking and Tuning Pre-trained Models").

    For each target column ``y_c`` (one-vs-all indicator of class c, or a regression target):
    ``L_c = max_{alpha,beta} log p(y_c | X, alpha, beta) / n`` with ``w ~ N(0, alpha^-1 I_d)``
    and ``y_c ~ N(X w, beta^-1 I_n)``; the score is the mean of ``L_c`` over columns.

    Higher is better. Needs target features ``X`` (n, d) and labels ``y`` (n,) or (n, 1); with
    ``regression=True``, ``y`` is a float (n,) or (n, t) target (multi-label: the 0/1 matrix).

    Algorithm: the fixed point of the JMLR version (thuml/LogME ``_fit_fixed_point``), run for all
    columns at once with a per-column convergence mask, so each column stops at the very
    iteration where the reference's per-class loop stops. The spectrum comes from ``eigh`` of
    the smaller Gram matrix (X^T X or X X^T) and the projections from ``X^T Y`` (class sums), so
    the n x k left singular matrix is never formed. Unlike the reference, when rank(X) = k < d
    (e.g. n < d) the evidence keeps the ``-(d - k)/2 * log(alpha)`` term of the d - k zero
    singular values (thuml/LogME issue #23); for full-rank X the values are equal.

    Cost: O(n d min(n, d) + min(n, d)^3 + n d + iters * min(n, d) * C).
    """
    if regression:
        X = check_features(X)
        Y = check_targets(y, X.shape[0])
        labels = None
    else:
        X, labels, C = check_features_labels(X, y)
        Y = None
    n, d = X.shape

    # Spectrum of X through the smaller Gram matrix: sigma_i = s_i^2.
    if n >= d:
        sigma, V = np.linalg.eigh(X.T @ X)
    else:
        sigma, U = np.linalg.eigh(X @ X.T)
    # Numerical rank: eigenvalues of a Gram matrix are accurate to ~ size * eps * max.
    keep = sigma > sigma[-1] * max(n, d) * np.finfo(np.float64).eps
    k = int(np.count_nonzero(keep))
    if k == 0:
        raise ValueError("X is numerically zero (rank 0): LogME needs non-constant features")
    sigma = sigma[keep]

    # x = U_k^T Y (k, t) without forming U when n >= d: U_k = X V_k / s_k.
    if labels is not None:
        if n >= d:
            XtY = class_sums(X, labels, C)[0].T  # (d, C)
            x = (V[:, keep].T @ XtY) / np.sqrt(sigma)[:, None]
        else:
            x = class_sums(U[:, keep], labels, C)[0].T  # (k, C)
        y_sq = np.bincount(labels, minlength=C).astype(np.float64)
    else:
        if n >= d:
            x = (V[:, keep].T @ (X.T @ Y)) / np.sqrt(sigma)[:, None]
        else:
            x = U[:, keep].T @ Y
        assert Y is not None  # regression: the targets were checked above
        y_sq = np.einsum("ij,ij->j", Y, Y)

    evidence = _fixed_point_evidence(sigma[:, None], x * x, y_sq, n)
    return float(np.mean(evidence))


def _fixed_point_evidence(sigma: np.ndarray, x2: np.ndarray, y_sq: np.ndarray, n: int) -> np.ndarray:
    """Per-column evidence / n of the fixed-point iteration, all columns at once.

    sigma: (k, 1) non-zero squared singular values; x2: (k, t) squared projections of the
    targets on the left singular vectors; y_sq: (t,) squared norms of the targets.
    """
    k, t_cols = x2.shape
    res_x2 = y_sq - x2.sum(axis=0)  # energy of the targets outside the column space of X
    alpha = np.ones(t_cols)
    beta = np.ones(t_cols)
    m2 = np.zeros(t_cols)
    res2 = np.zeros(t_cols)
    active = np.ones(t_cols, dtype=bool)
    for _ in range(_MAX_ITER):
        t = alpha / beta
        inv = 1.0 / (sigma + t)  # (k, t)
        gamma = (sigma * inv).sum(axis=0)
        m2_new = (sigma * x2 * inv**2).sum(axis=0)  # |m|^2 of the posterior mean
        res2_new = (x2 * (t * inv) ** 2).sum(axis=0) + res_x2  # |y - X m|^2
        alpha_new = gamma / (m2_new + _EPS)
        beta_new = (n - gamma) / (res2_new + _EPS)
        # Converged columns keep the values of the iteration at which they stopped.
        alpha = np.where(active, alpha_new, alpha)
        beta = np.where(active, beta_new, beta)
        m2 = np.where(active, m2_new, m2)
        res2 = np.where(active, res2_new, res2)
        active &= ~(np.abs(alpha_new / beta_new - t) / t <= _RTOL)
        if not active.any():
            break
    log_alpha = np.log(alpha)
    evidence = (
        k / 2.0 * log_alpha  # d/2 log(alpha) minus (d - k)/2 log(alpha) of the zero singular values
        + n / 2.0 * np.log(beta)
        - 0.5 * np.log(alpha + beta * sigma).sum(axis=0)
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - n / 2.0 * np.log(2 * np.pi)
    )
    out: np.ndarray = evidence / n
    return out
