"""Per-class sufficient statistics shared by the label-based estimators (vectorised, O(nd))."""
from __future__ import annotations

import numpy as np
from scipy import sparse


def one_hot(y: np.ndarray, C: int) -> sparse.csr_array:
    """Sparse (C, n) indicator matrix: row c selects the samples of class c."""
    n = y.shape[0]
    return sparse.csr_array((np.ones(n), (y, np.arange(n))), shape=(C, n))


def class_sums(X: np.ndarray, y: np.ndarray, C: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class row sums (C, d) and counts (C,) of X for labels y in 0..C-1."""
    sums = np.asarray(one_hot(y, C) @ X)
    counts = np.bincount(y, minlength=C)
    return sums, counts


def class_means_variances(X: np.ndarray, y: np.ndarray, C: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class means (C, d), population variances (C, d, ddof=0, two-pass) and counts (C,)."""
    sums, counts = class_sums(X, y, C)
    means = sums / counts[:, None]
    resid = X - means[y]
    var = np.asarray(one_hot(y, C) @ (resid * resid)) / counts[:, None]
    return means, var, counts


def class_slices(y: np.ndarray, C: int) -> tuple[np.ndarray, list[slice]]:
    """A stable ordering of the rows by class and, per class, its slice in that ordering."""
    order = np.argsort(y, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(y, minlength=C))])
    return order, [slice(int(bounds[c]), int(bounds[c + 1])) for c in range(C)]
