"""SFDA: Self-challenging Fisher Discriminant Analysis (Shao et al., ECCV 2022)."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import linalg
from scipy.special import softmax

from ._classwise import class_sums
from ._validation import check_features_labels

__all__ = ["sfda", "fisher_posteriors", "adaptive_shrinkage"]


def _class_stats(X: np.ndarray, y: np.ndarray, C: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class counts (C,), priors (C,) and class means (C, d)."""
    sums, counts = class_sums(X, y, C)
    counts = counts.astype(np.float64)
    return counts, counts / X.shape[0], sums / counts[:, None]


def _shrink(S: np.ndarray, shrinkage: float) -> np.ndarray:
    """(1 - s) S + s * (tr(S) / d) I."""
    d = S.shape[0]
    out = (1.0 - shrinkage) * S
    out.flat[:: d + 1] += shrinkage * (np.trace(S) / d)
    return out


def adaptive_shrinkage(Sw: np.ndarray, iterations: int = 3) -> float:
    """SFDA's regularisation strength ``max(exp(-5 * lambda), 1e-10)``.

    ``lambda`` approximates the largest eigenvalue of the within-class covariance ``Sw`` with
    ``iterations`` rounds of the power method started from the row sums of ``Sw`` (two
    matrix-vector products per round, Rayleigh-type quotient ``x^T Sw y`` at the end), exactly
    as in the authors' code, so that the regularisation (and hence the score) is the same.
    Where that start vector is annihilated by ``Sw`` (the reference then yields NaN), the exact
    largest eigenvalue is used instead.
    """
    x = Sw.sum(axis=1)
    v = x
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(iterations):
            t = Sw @ x
            v = t / np.linalg.norm(t)
            t = Sw @ v
            x = t / np.linalg.norm(t)
        lam = float(x @ Sw @ v)
    if not np.isfinite(lam):
        lam = float(np.linalg.eigvalsh(Sw)[-1])
    return max(float(np.exp(-5.0 * lam)), 1e-10)


def fisher_posteriors(X: np.ndarray, y: np.ndarray, C: int,
                      shrinkage: float | None = None) -> tuple[np.ndarray, float]:
    """Class posteriors p(c | x_i) of the regularised Fisher (LDA) classifier used by SFDA.

    With within-class covariance ``Sw = (1/n) sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T`` and
    ``Sw_s = (1 - s) Sw + s tr(Sw)/d I``, the reference projects on *all* generalised
    eigenvectors ``V`` of ``(S_b, Sw_s)``; since ``V^T Sw_s V = I`` we have ``V V^T = Sw_s^{-1}``
    and the logits are ``x^T Sw_s^{-1} mu_c - mu_c^T Sw_s^{-1} mu_c / 2 + log pi_c``.
    Returns ``(P (n, C), s)``. Inputs must already be validated (float64, labels 0..C-1).
    """
    n = X.shape[0]
    _, priors, means = _class_stats(X, y, C)
    centered = X - means[y]
    Sw = (centered.T @ centered) / n
    if not np.any(Sw):
        raise ValueError("features have zero within-class variance (every example equals its class mean)")
    if shrinkage is None:
        shrinkage = adaptive_shrinkage(Sw)
    Sw_s = _shrink(Sw, shrinkage)
    try:
        coef = linalg.solve(Sw_s, means.T, assume_a="pos").T  # (C, d) = means Sw_s^{-1}
    except (linalg.LinAlgError, ValueError) as exc:
        raise ValueError(f"regularised within-class covariance is not positive definite ({exc}); "
                         "pass a larger shrinkage=") from None
    intercept = -0.5 * np.einsum("cd,cd->c", means, coef) + np.log(priors)
    return softmax(X @ coef.T + intercept, axis=1), shrinkage


def sfda(X: ArrayLike, y: ArrayLike, *, shrinkage: float | None = None) -> float:
    """SFDA score (Shao et al., "Not All Models Are Equal: Predicting Model Transferability in
    a Self-challenging Fisher Space", ECCV 2022). Higher is better.

    Formula: fit a regularised Fisher classifier, soften its posteriors ``q = softmax(p)``,
    mix each example towards the mean of the *other* classes,
    ``x_i' = q_{i,y_i} x_i + (1 - q_{i,y_i}) mean_{c != y_i} mu_c`` (ConfMix), refit with the same
    regularisation and return ``(1/n) sum_i p'(y_i | x_i')``.

    Matches ``SFDA_Score`` of TencentARC/SFDA (the regularisation ``s = max(exp(-5 lambda_max(Sw)),
    1e-10)`` uses the same 3-step power iteration); ``shrinkage=`` fixes ``s`` in [0, 1] instead.
    Needs: features (n, d) and class labels (>= 2 classes). Cost: O(n d^2 + d^3 + n d C).
    """
    X, y, C = check_features_labels(X, y)
    if shrinkage is not None and not 0.0 <= float(shrinkage) <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    prob, s = fisher_posteriors(X, y, C, shrinkage)
    q = softmax(prob, axis=1)[np.arange(X.shape[0]), y][:, None]
    _, _, means = _class_stats(X, y, C)
    others = (means.sum(axis=0)[None, :] - means) / (C - 1)
    X_mix = q * X + (1.0 - q) * others[y]
    prob2, _ = fisher_posteriors(X_mix, y, C, s)
    return float(prob2[np.arange(X.shape[0]), y].mean())
