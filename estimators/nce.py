"""NCE: negative conditional entropy of the target labels given the source model's labels."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._validation import check_labels, check_probs

__all__ = ["nce"]


def nce(X: ArrayLike, y: ArrayLike) -> float:
    """NCE (Tran, Nguyen & Hassner, ICCV 2019, "Transferability and hardness of supervised classification tasks").

    With z_i = argmax_z theta(x_i)_z (the source model's hard label) and the empirical joint
    ``P(y, z)``: ``NCE = -H(Y | Z) = sum_{y,z} P(y, z) log(P(y, z) / P(z))`` (0 log 0 = 0).

    Higher is better (at most 0). Needs ``X`` = the source model's class probabilities on the
    target examples (n, Z) (only their argmax is used) and target labels ``y`` (n,).
    Cost: O(n Z + C Z).
    """
    P = check_probs(X)
    y, C = check_labels(y, P.shape[0])
    n, Z = P.shape
    if n < C:
        raise ValueError(f"n={n} samples is fewer than the {C} classes")
    z = np.argmax(P, axis=1)
    joint = np.bincount(y * Z + z, minlength=C * Z).reshape(C, Z) / n
    p_z = joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    ratio = joint[nz] / np.broadcast_to(p_z, joint.shape)[nz]
    return float(np.sum(joint[nz] * np.log(ratio)))
