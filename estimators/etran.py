"""ETran's components (Gholami et al., "ETran: Energy-Based Transferability Estimation", ICCV 2023)."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import softmax

from ._classwise import class_sums
from ._validation import check_features_labels

__all__ = ["etran_energy", "etran_lda"]


def etran_energy(X: ArrayLike, y: ArrayLike, *, percent: float = 0.5, tail: str = "bottom") -> float:
    """ETran energy score (Gholami et al., ICCV 2023). Higher is better.

    Formula: ``E(x_i) = log sum_j exp(x_ij)`` (free energy of the features read as logits);
    the score is the mean of E over the ``k = floor(int(10 * percent) * n / 1000)`` examples
    with the lowest energy (``tail="bottom"``, default) or the highest (``tail="top"``), i.e.
    ``percent`` percent of the examples, ``percent`` truncated to a multiple of 0.1 as in the
    authors' ``Energy_Score(f, 0.5, 'bot')``. With the default 0.5 % it needs n >= 200: below
    that k = 0 and the reference averages an empty set (NaN), so this raises ``ValueError``.
    The labels are validated but not used. Needs: features (n, d). Cost: O(n d).
    """
    X, _, _ = check_features_labels(X, y)
    if tail not in ("bottom", "bot", "top"):
        raise ValueError(f"tail must be 'bottom' or 'top', got {tail!r}")
    if not 0.1 <= percent <= 100:
        raise ValueError(f"percent must be between 0.1 and 100 (a percentage of the examples), got {percent}")
    n = X.shape[0]
    k = (int(percent * 10) * n) // 1000
    if k < 1:
        need = -(-1000 // int(percent * 10))
        raise ValueError(
            f"etran_energy averages the {percent}% lowest/highest energies: with n={n} examples that is "
            f"no example at all; use at least {need} examples or a larger percent="
        )
    k = min(k, n)
    top = X.max(axis=1, keepdims=True)  # stable log-sum-exp (faster here than scipy's)
    energy = top[:, 0] + np.log(np.exp(X - top).sum(axis=1))
    if tail == "top":
        part = np.partition(energy, n - k)[n - k:]
    else:
        part = np.partition(energy, k - 1)[:k]
    return float(part.mean())


def etran_lda(X: ArrayLike, y: ArrayLike) -> float:
    """ETran LDA score (Gholami et al., ICCV 2023): mean posterior of the true class. Higher is better.

    Formula: ``(1/n) sum_i softmax_c(x_i^T mu_c - ||mu_c||^2 / 2 + log pi_c)[y_i]`` with class
    means ``mu_c`` and priors ``pi_c``. This is what the authors' ``LDA_Score`` computes: it
    projects on the eigenvectors ``V`` of ``Sw^{-1} S_b`` obtained with a *symmetric*
    eigensolver, which returns an orthonormal basis, so ``V V^T = I`` and the (shrunk) scatter
    matrices cancel out of the logits ``x^T (mu V V^T) - ...``. Matches ``LDA_Score`` of
    mgholamikn/ETran. Needs: features (n, d) and class labels. Cost: O(n d C).
    """
    X, y, C = check_features_labels(X, y)
    n = X.shape[0]
    sums, counts = class_sums(X, y, C)
    means = sums / counts[:, None]
    logits = X @ means.T - 0.5 * np.einsum("cd,cd->c", means, means) + np.log(counts / n)
    return float(softmax(logits, axis=1)[np.arange(n), y].mean())
