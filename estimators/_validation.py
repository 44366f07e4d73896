"""Input validation shared by every estimator (the library's boundary).

Each helper returns float64 / int64 copies that the estimators may use freely and raises
``ValueError`` with a message a user can act on. Estimators call these first and then trust
their inputs (scikit-learn's ``check_array`` / ``check_X_y`` pattern).
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "check_features",
    "check_labels",
    "check_features_labels",
    "check_probs",
    "check_targets",
    "check_two_domains",
    "check_int_param",
    "check_float_param",
]


def _finite(a: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{what} contains {bad} NaN or infinite value(s); clean or impute them first")


def check_features(X: ArrayLike, *, name: str = "X", min_samples: int = 2) -> np.ndarray:
    """Return ``X`` as a C-contiguous float64 (n, d) array, or raise ``ValueError``."""
    try:
        A = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array: {exc}") from None
    if A.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_samples, n_features), got shape {A.shape}")
    n, d = A.shape
    if n < min_samples:
        raise ValueError(f"{name} needs at least {min_samples} samples, got {n}")
    if d < 1:
        raise ValueError(f"{name} has no feature columns")
    _finite(A, name)
    return np.ascontiguousarray(A)


def check_labels(y: ArrayLike, n: int | None = None, *, min_classes: int = 2,
                 min_per_class: int = 1) -> tuple[np.ndarray, int]:
    """Validate class labels and remap them to 0..C-1.

    Any hashable, sortable labels are accepted (ints with gaps, strings); they are remapped in
    sorted order so the result never depends on the label values. Returns ``(y_int64, C)``.
    """
    a = np.asarray(y)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"y must be a 1-D array of class labels, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"X has {n} samples but y has {a.shape[0]} labels")
    if a.dtype.kind == "f":
        _finite(a, "y")
        if not np.all(a == np.round(a)):
            raise ValueError("y must hold integer class labels; for real-valued targets use regression=True")
    if a.dtype.kind not in "iufUSOb":
        raise ValueError(f"y has unsupported dtype {a.dtype}")
    classes, y_idx, counts = np.unique(a, return_inverse=True, return_counts=True)
    C = classes.shape[0]
    if C < min_classes:
        raise ValueError(f"y has {C} distinct class(es); at least {min_classes} are needed")
    if min_per_class > 1 and counts.min() < min_per_class:
        small = [str(c) for c in classes[counts < min_per_class][:5]]
        raise ValueError(
            f"every class needs at least {min_per_class} examples; class(es) {', '.join(small)} have fewer"
        )
    return y_idx.astype(np.int64).reshape(-1), int(C)


def check_features_labels(X: ArrayLike, y: ArrayLike, *, min_classes: int = 2,
                          min_per_class: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """``check_features`` + ``check_labels``; also rejects n < number of classes."""
    F = check_features(X)
    labels, C = check_labels(y, F.shape[0], min_classes=min_classes, min_per_class=min_per_class)
    if F.shape[0] < C:
        raise ValueError(f"n={F.shape[0]} samples is fewer than the {C} classes")
    return F, labels, C


def check_targets(y: ArrayLike, n: int) -> np.ndarray:
    """Real-valued regression targets as float64 (n, t)."""
    try:
        T = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"regression targets must be numeric: {exc}") from None
    if T.ndim == 1:
        T = T[:, None]
    if T.ndim != 2:
        raise ValueError(f"regression targets must have shape (n,) or (n, t), got {T.shape}")
    if T.shape[0] != n:
        raise ValueError(f"X has {n} samples but y has {T.shape[0]} rows")
    _finite(T, "y")
    return np.ascontiguousarray(T)


def check_probs(probs: ArrayLike, *, name: str = "P", atol: float = 1e-3) -> np.ndarray:
    """Source-model class probabilities (n, Z): non-negative rows that sum to 1 (within atol)."""
    P = check_features(probs, name=name)
    if P.shape[1] < 2:
        raise ValueError(f"{name} must have at least 2 source classes (columns), got {P.shape[1]}")
    if P.min() < 0:
        raise ValueError(f"{name} has negative entries: pass probabilities (softmax outputs), not logits")
    sums = P.sum(axis=1)
    worst = float(np.max(np.abs(sums - 1.0)))
    if worst > atol:
        raise ValueError(
            f"rows of {name} must sum to 1 (worst row sums to {sums[np.argmax(np.abs(sums - 1.0))]:.4g}); "
            "pass softmax probabilities, not logits or features"
        )
    return P


def check_two_domains(X: ArrayLike, Y: ArrayLike, *, min_samples: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Two domains' representations: float64 arrays with the same feature dimension."""
    A = check_features(X, name="X (first domain)", min_samples=min_samples)
    B = check_features(Y, name="Y (second domain)", min_samples=min_samples)
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"the two domains have different feature dimensions: {A.shape[1]} vs {B.shape[1]}")
    return A, B


def check_int_param(name: str, value: object, *, low: int, high: int) -> int:
    """An integer parameter within ``[low, high]`` (integral floats such as 128.0 accepted).

    Refuses booleans, non-finite and fractional values with a ``ValueError`` naming the bounds, so
    that a parameter such as ``n_projections=1e9`` fails before it allocates anything."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    if isinstance(value, (float, np.floating)) and (not np.isfinite(value) or value != int(value)):
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    out = int(value)
    if not low <= out <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {out}")
    return out


def check_float_param(name: str, value: object, *, low: float | None = None, high: float | None = None,
                      low_open: bool = False) -> float:
    """A finite real parameter within the given bounds (``low_open``: ``value > low``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    out = float(value)
    if not np.isfinite(out):
        raise ValueError(f"{name} must be a finite number, got {out}")
    if low is not None and (out <= low if low_open else out < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {out}")
    if high is not None and out > high:
        raise ValueError(f"{name} must be <= {high}, got {out}")
    return out
