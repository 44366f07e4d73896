"""TransferRank estimators: transferability scores as pure numerics.

The contract (shared/DESIGN.md)::

    estimators.names()                      -> list of estimator names
    estimators.score(name, X, y, **params)  -> float
    estimators.info(name)                   -> EstimatorInfo (needs, direction, paper, cost)

Each estimator also lives in its own module (``estimators.logme.logme`` ...). For the
``domains`` estimators (divergences between two representations) the second argument is the
other domain's features, not labels. Invalid input raises ``ValueError``.
"""
from __future__ import annotations

import inspect
import math
from typing import Any

from numpy.typing import ArrayLike

from ._registry import REGISTRY, EstimatorInfo

__all__ = ["names", "score", "info", "EstimatorInfo"]
__version__ = "0.1.0"


def names() -> list[str]:
    """All estimator names, in registry order."""
    return list(REGISTRY)


def info(name: str) -> EstimatorInfo:
    """Metadata for ``name``; ``ValueError`` for an unknown name."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; choose from {', '.join(REGISTRY)}") from None


def score(name: str, X: ArrayLike, y: ArrayLike, **params: Any) -> float:
    """Score with estimator ``name``; always a finite float or a ``ValueError``."""
    fn = info(name).load()
    try:
        inspect.signature(fn).bind(X, y, **params)
    except TypeError as exc:
        raise ValueError(f"invalid parameters for {name}: {exc}") from None
    value = float(fn(X, y, **params))
    if not math.isfinite(value):
        raise ValueError(f"{name} produced a non-finite value ({value}) on this input")
    return value
