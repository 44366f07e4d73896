"""LEEP: log expected empirical prediction of the source model's classifier on the target labels."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._classwise import one_hot
from ._validation import check_labels, check_probs

__all__ = ["leep", "leep_resamples"]


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


def leep_resamples(P: np.ndarray, y: np.ndarray, C: int, idx: np.ndarray) -> np.ndarray:
    """LEEP of validated probabilities P (n, Z), labels y in 0..C-1, on each resample ``idx[b]``
    (B, m row indices): ``leep_from_probs(P[idx[b]], y[idx[b]], C)`` for every b (equal up to
    rounding), vectorised. A resample is its row counts w (w_i = times row i was drawn): per
    class c the joint is ``w[I_c] @ P[I_c]`` and the rows' likelihoods ``P[I_c] @ cond[c]``, so
    the B resamples cost two (B, n_c) x (n_c, Z) products per class and no (m, Z) copy.
    Cost: O(B n Z) in BLAS; memory O(B (n + C Z)).
    """
    P = np.asarray(P, dtype=np.float64)
    idx = np.asarray(idx)
    B, m = idx.shape
    W = np.zeros((B, P.shape[0]))
    np.add.at(W, (np.repeat(np.arange(B), m), idx.ravel()), 1.0)
    members = [np.flatnonzero(y == c) for c in range(C)]
    joint = np.stack([W[:, rows] @ P[rows] for rows in members], axis=1)  # (B, C, Z)
    p_z = joint.sum(axis=1, keepdims=True)
    cond = np.divide(joint, p_z, out=np.zeros_like(joint), where=p_z > 0)  # P(y | z) per resample
    total = np.zeros(B)
    for c, rows in enumerate(members):
        eep = P[rows] @ cond[:, c, :].T  # (n_c, B)
        w = W[:, rows].T
        with np.errstate(divide="ignore"):  # log 0 = -inf, as leep_from_probs gives
            total += np.where(w > 0, w * np.log(np.where(w > 0, eep, 1.0)), 0.0).sum(axis=0)
    out: np.ndarray = total / m
    return out
