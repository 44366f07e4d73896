"""PED: Potential Energy Decline (Li et al., "Exploring Model Transferability through the Lens of
Potential Energy", ICCV 2023)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial.distance import cdist

from ._classwise import class_means_variances
from ._validation import check_features, check_features_labels, check_int_param

__all__ = ["ped", "ped_dynamics"]


def _repulsion(zmeans: np.ndarray, radius: np.ndarray, time_step: float, nsigma: float, constant: float) -> np.ndarray:
    """Displacement (C, d) of every class mean in one PED step (standardised units).

    Class a moves by ``sum_b step_ab (mu_a - mu_b) / ||mu_a - mu_b||`` with
    ``step_ab = min(time_step^2 constant F_ab / 2, F_ab)`` and the overlap
    ``F_ab = max(|nsigma| (R_a + R_b) - ||mu_a - mu_b||, 0)``; coincident means push nothing.
    """
    dist = cdist(zmeans, zmeans)
    overlap = np.maximum(abs(nsigma) * (radius[:, None] + radius[None, :]) - dist, 0.0)
    np.fill_diagonal(overlap, 0.0)
    step = np.minimum(0.5 * time_step**2 * constant * overlap, overlap)
    W = np.divide(step, dist, out=np.zeros_like(step), where=dist > 0)
    shift: np.ndarray = W.sum(axis=1)[:, None] * zmeans - W @ zmeans
    return shift


def ped_dynamics(X: ArrayLike, y: ArrayLike, *, exit_ratio: float = 0.5, time_step: float = 0.1,
                 nsigma: float = 0.6, constant: float = 1.0, max_steps: int = 6, eps: float = 1e-3,
                 reference: ArrayLike | None = None) -> tuple[np.ndarray, int]:
    """Run PED's simulated class dynamics and return ``(moved features, number of steps taken)``.

    Features are standardised with the mean / std (floored at ``eps``) of ``reference`` (the
    target features themselves when None; ImageNet-val features in the paper). Each class is a
    ball of radius ``R_c = sqrt(sum_j Var(z_cj))`` around its mean; each overlapping pair
    (``F_ab = max(nsigma (R_a + R_b) - ||mu_a - mu_b||, 0) > 0``) pushes the two classes apart
    along ``mu_a - mu_b`` by ``min(time_step^2 constant F_ab / 2, F_ab)``. A step is kept while
    its total displacement ``sum |shift|`` exceeds ``exit_ratio`` times the first step's, for at
    most ``max_steps`` steps. Classes move rigidly (their variances never change), so the steps
    run on the (C, d) class statistics and the features are shifted once at the end.
    """
    X, y, C = check_features_labels(X, y)
    max_steps = check_int_param("max_steps", max_steps, low=0, high=10_000)
    ref = X if reference is None else check_features(reference, name="reference")
    if ref.shape[1] != X.shape[1]:
        raise ValueError(f"reference has {ref.shape[1]} features but X has {X.shape[1]}")
    center = ref.mean(axis=0)
    scale = np.maximum(ref.std(axis=0), eps)
    means, var, _ = class_means_variances(X, y, C)
    zmeans = (means - center) / scale
    radius = np.sqrt((var / scale**2).sum(axis=1))
    total = np.zeros_like(zmeans)
    first = None
    steps = 0
    while steps < max_steps:
        shift = _repulsion(zmeans, radius, time_step, nsigma, constant)
        change = float(np.abs(shift).sum())
        if first is None:
            first = change
        if first == 0.0 or change / first <= exit_ratio:
            break
        zmeans = zmeans + shift
        total += shift
        steps += 1
    if steps == 0:
        return X, 0
    return X + (total * scale)[y], steps


def ped(X: ArrayLike, y: ArrayLike, *, base: str = "sfda", exit_ratio: float = 0.5, time_step: float = 0.1,
        nsigma: float = 0.6, constant: float = 1.0, max_steps: int = 6, eps: float = 1e-3,
        reference: ArrayLike | None = None, **base_params: Any) -> float:
    """PED score (Li et al., "Exploring Model Transferability through the Lens of Potential
    Energy", ICCV 2023). Higher is better.

    Formula: ``score = base(X_T, y)`` where ``X_T`` are the features after the simulated
    potential-energy descent of ``ped_dynamics`` (overlapping classes pushed apart by a
    Coulomb-like repulsion, as fine-tuning would), and ``base`` is ``"sfda"`` (default) or
    ``"logme"``. Defaults are the authors' CLI defaults (exit_ratio 0.5, time_step 0.1,
    nsigma 0.6, constant 1.0, at most 6 steps); matches ``PED_Score`` of lixiaotong97/PED with
    ``general_X`` = the target features. ``base="logme"`` uses this package's LogME, which keeps
    the rank-deficiency term the thuml reference drops, so it differs from the reference when
    rank(X) < d. Needs: features (n, d) and class labels.
    Cost: O(n d + steps C^2 d) plus the base estimator.
    """
    if base not in ("sfda", "logme"):
        raise ValueError(f"base must be 'sfda' or 'logme', got {base!r}")
    X_moved, _ = ped_dynamics(X, y, exit_ratio=exit_ratio, time_step=time_step, nsigma=nsigma,
                              constant=constant, max_steps=max_steps, eps=eps, reference=reference)
    from .logme import logme
    from .sfda import sfda

    base_fn: Callable[..., float] = sfda if base == "sfda" else logme
    return float(base_fn(X_moved, y, **base_params))
