"""N-LEEP: LEEP with a Gaussian mixture on the (PCA-reduced) features as the source classifier."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._validation import check_features_labels
from .leep import leep_from_probs

__all__ = ["nleep"]


def nleep(
    X: ArrayLike,
    y: ArrayLike,
    *,
    n_components: int | None = None,
    variance: float = 0.8,
    random_state: int = 123,
    covariance_type: str = "full",
) -> float:
    """N-LEEP (Li et al., CVPR 2021, "Ranking neural checkpoints").

    X is reduced by PCA to the fewest components that explain ``variance`` (0.8) of its variance,
    a full-covariance Gaussian mixture with ``n_components`` (default 5 C) components is fitted
    on it, and ``NLEEP = LEEP(posteriors of the mixture components, y)``. Settings and
    numerics follow the authors' code (google-research ``stable_transfer``: sklearn
    ``PCA(0.8, svd_solver="full")``, output cast to float32, ``GaussianMixture(5 C,
    random_state=123)`` with sklearn's defaults). ``covariance_type="diag"`` (not the reference)
    fits where full covariances are singular: few samples per component in many PCA dimensions.

    Higher is better (at most 0). Needs target features ``X`` (n, d) and labels ``y`` (n,);
    ``ValueError`` when the mixture cannot be fitted (too few samples for its components).
    Cost: O(n d min(n, d) + iters * n * K * d'^2) with K = 5 C components in d' PCA dimensions;
    the mixture dominates: at n = 10^4, d = 768, C = 100 it is 500 full covariances in ~500
    dimensions (~1 GiB, ~3 TFLOP per EM iteration), far beyond the 2 s budget of the others.
    """
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    X, y, C = check_features_labels(X, y)
    n = X.shape[0]
    if not 0 < variance <= 1:
        raise ValueError(f"variance must be in (0, 1], got {variance}")
    K = 5 * C if n_components is None else int(n_components)
    if K < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    if covariance_type not in ("full", "tied", "diag", "spherical"):
        raise ValueError(f"covariance_type must be full, tied, diag or spherical, got {covariance_type!r}")
    if n < K:
        raise ValueError(
            f"nleep fits a Gaussian mixture with {K} components (5 per class) but there are only "
            f"{n} samples; pass n_components < {n} or use more samples"
        )
    n_pca = variance if variance < 1 else None
    # float32 after PCA as in the reference: the mixture's k-means initialisation and EM
    # depend on it, and matching the reference's optimum needs the same input.
    Z = PCA(n_components=n_pca, svd_solver="full").fit_transform(X).astype(np.float32)
    gmm = GaussianMixture(n_components=K, random_state=random_state, covariance_type=covariance_type)
    try:
        # EM makes many small (d' x d') BLAS calls per component: one BLAS thread is faster
        # there, and much faster on a busy machine (threads spin-wait; ~30x measured).
        with threadpool_limits(limits=1, user_api="blas"):
            posteriors = gmm.fit(Z).predict_proba(Z)
    except ValueError as exc:
        raise ValueError(
            f"nleep: the {K}-component {covariance_type}-covariance Gaussian mixture could not be "
            f"fitted on {n} samples in {Z.shape[1]} PCA dimensions (some components have singular covariance); pass a "
            f"smaller n_components or use more samples. sklearn said: {str(exc)[:160]}"
        ) from None
    return leep_from_probs(np.asarray(posteriors, dtype=np.float64), y, C)
