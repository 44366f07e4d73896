"""LEEP: log expected empirical prediction of the source model's classifier on the target labels."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._classwise import one_hot
from ._validation import check_labels, check_probs

__all__ = ["leep"]


def leep(X: ArrayLike, y: ArrayLike) -> float:
    """LEEP (Nguyen et al., ICML 2020, "LEEP: a new measure to evaluate transferability").

    With the empirical joint ``P(y, z) = 1/n sum_i theta(x_i)_z [y_i = y]`` and
    ``P(y | z) = P(y, z) / P(z)``: ``LEEP = 1/n sum_i log sum_z P(y_i | z) theta(x_i)_z``.

    Higher is better (at most 0). Needs ``X`` = the source model's class probabilities on the
    target examples (n, Z), rows summing to 1, and target labels ``y`` (n,). Source classes
    that receive no probability mass are ignored. Cost: O(n Z).
    """
    P = check_probs(X)
    y, C = check_labels(y, P.shape[0])
    if P.shape[0] < C:
        raise ValueError(f"n={P.shape[0]} samples is fewer than the {C} classes")
    return leep_from_probs(P, y, C)


def leep_from_probs(P: np.ndarray, y: np.ndarray, C: int) -> float:
    """LEEP on validated probabilities P (n, Z) and labels y in 0..C-1 (shared with NLEEP)."""
    joint = np.asarray(one_hot(y, C) @ P)  # (C, Z), n * P(y, z)
    p_z = joint.sum(axis=0)
    cond = np.divide(joint, p_z, out=np.zeros_like(joint), where=p_z > 0)  # P(y | z)
    eep = np.einsum("iz,iz->i", P, cond[y])  # sum_z P(y_i | z) theta(x_i)_z
    return float(np.mean(np.log(eep)))
