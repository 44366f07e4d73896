"""GBC: Gaussian Bhattacharyya coefficient between the classes in feature space."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._classwise import class_means_variances
from ._validation import check_features_labels

__all__ = ["gbc"]

_VAR_FLOOR = 1e-4  # floor on per-dimension variances (constant features), as in the reference
_BLOCK = 2**21  # entries of the (rows, C, d) pairwise block computed at once (16 MB)


def gbc(X: ArrayLike, y: ArrayLike, *, gaussian: str = "diagonal") -> float:
    """GBC (Pandy et al., CVPR 2022, "Transferability estimation using Bhattacharyya class separability").

    Each class c is a Gaussian N(mu_c, Sigma_c) (variances ddof = 0, floored at 1e-4);
    ``GBC = -sum_{c != c'} exp(-D_B(c, c'))`` with the Bhattacharyya distance
    ``D_B = 1/8 (mu_c - mu_c')^T Sigma^-1 (mu_c - mu_c') + 1/2 log(det Sigma / sqrt(det Sigma_c det Sigma_c'))``,
    ``Sigma = (Sigma_c + Sigma_c')/2``. ``gaussian="diagonal"`` (default) uses per-dimension
    variances; ``"spherical"`` one variance per class (the mean of its per-dimension
    variances) and, as in the authors' code (google-research ``stable_transfer``), the scalar
    variances in the log term.

    Higher is better (0 = perfectly separated classes). Needs target features ``X`` (n, d) and
    labels ``y`` (n,). Cost: O(n d + C^2 d).
    """
    if gaussian not in ("diagonal", "spherical"):
        raise ValueError(f"gaussian must be 'diagonal' or 'spherical', got {gaussian!r}")
    X, y, C = check_features_labels(X, y)
    means, var, _ = class_means_variances(X, y, C)
    var = np.maximum(var, _VAR_FLOOR)
    if gaussian == "spherical":
        var = var.mean(axis=1, keepdims=True)  # (C, 1): one variance per class
    log_det = np.log(var).sum(axis=1)  # (C,): the reference's log term (scalar when spherical)
    bd = np.empty((C, C))
    rows = max(1, _BLOCK // (C * X.shape[1]))
    for start in range(0, C, rows):  # blocks of class rows bound the (rows, C, d) temporaries
        blk = slice(start, min(C, start + rows))
        avg = (var[blk, None, :] + var[None, :, :]) / 2.0  # (b, C, d) or (b, C, 1)
        diff = means[blk, None, :] - means[None, :, :]  # (b, C, d)
        bd[blk] = (diff * diff / avg).sum(axis=2) / 8.0 + 0.5 * (
            np.log(avg).sum(axis=2) - 0.5 * log_det[blk, None] - 0.5 * log_det[None, :]
        )
    np.fill_diagonal(bd, np.inf)
    return float(-np.sum(np.exp(-bd)))
