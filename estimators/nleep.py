"""N-LEEP: LEEP with a Gaussian mixture on the (PCA-reduced) features as the source classifier."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._validation import check_features_labels, check_int_param
from .leep import leep_from_probs

__all__ = ["nleep", "nleep_posteriors", "MAX_FIT_ROWS", "MAX_DIMS", "MAX_COMPONENTS"]

#: Default bounds (see ``nleep``): rows the PCA and the mixture are fitted on, PCA dimensions,
#: mixture components. None of them binds on the reference's conformance inputs.
MAX_FIT_ROWS = 5000
MAX_DIMS = 64
MAX_COMPONENTS = 512


def _cap(value: float | None, name: str) -> int | None:
    if value is None:
        return None
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    return int(value)


def nleep(
    X: ArrayLike,
    y: ArrayLike,
    *,
    n_components: int | None = None,
    variance: float = 0.8,
    random_state: int = 123,
    covariance_type: str = "full",
    max_fit_rows: int | None = MAX_FIT_ROWS,
    max_dims: int | None = MAX_DIMS,
    max_components: int | None = MAX_COMPONENTS,
) -> float:
    """N-LEEP (Li et al., CVPR 2021, "Ranking neural checkpoints").

    X is reduced by PCA to the fewest components that explain ``variance`` (0.8) of its variance,
    a full-covariance Gaussian mixture with ``n_components`` (default 5 C) components is fitted
    on it, and ``NLEEP = LEEP(posteriors of the mixture components, y)``. Settings and
    numerics follow the authors' code (google-research ``stable_transfer``: sklearn
    ``PCA(0.8, svd_solver="full")``, output cast to float32, ``GaussianMixture(5 C,
    random_state=123)`` with sklearn's defaults). ``covariance_type="diag"`` (not the reference)
    fits where full covariances are singular: few samples per component in many PCA dimensions.

    Bounds (None lifts one; the defaults bind only on large inputs, so wherever the reference
    runs in reasonable time the value is the reference's):

    * ``max_fit_rows`` (5,000): with more rows, the PCA and the mixture are fitted on that many
      rows drawn without replacement (seeded by ``random_state``); the posteriors, and so the
      score, still cover every row.
    * ``max_dims`` (64): at most that many PCA dimensions (the leading ones) even when
      ``variance`` needs more.
    * ``max_components`` (512): at most that many mixture components (never fewer than C).

    Higher is better (at most 0). Needs target features ``X`` (n, d) and labels ``y`` (n,);
    ``ValueError`` when the mixture cannot be fitted (too few samples for its components).
    Cost: O(m d min(m, d) + iters * m * K * d'^2 + n * K * d'^2) with m = min(n, max_fit_rows)
    fitted rows, K = min(5 C, max_components) components in d' <= max_dims PCA dimensions,
    iters <= 100 (sklearn's EM limit): bounded in n except for the final O(n K d'^2) posteriors.
    Unbounded (all caps None) at n = 10^4, d = 768, C = 100 it is 500 full covariances in ~500
    dimensions (~1 GiB, ~3 TFLOP per EM iteration).
    """
    P, y_checked, C = _posteriors(X, y, n_components=n_components, variance=variance, random_state=random_state,
                       covariance_type=covariance_type, max_fit_rows=max_fit_rows, max_dims=max_dims,
                       max_components=max_components)
    return leep_from_probs(P, y_checked, C)


def nleep_posteriors(
    X: ArrayLike,
    y: ArrayLike,
    *,
    n_components: int | None = None,
    variance: float = 0.8,
    random_state: int = 123,
    covariance_type: str = "full",
    max_fit_rows: int | None = MAX_FIT_ROWS,
    max_dims: int | None = MAX_DIMS,
    max_components: int | None = MAX_COMPONENTS,
) -> np.ndarray:
    """The mixture posteriors (n, K) that N-LEEP scores: ``nleep(X, y) = LEEP(nleep_posteriors(X, y), y)``.

    Same arguments, bounds and errors as ``nleep``; the bootstrap (``estimators.uncertainty``)
    resamples LEEP on these per-example posteriors instead of refitting the mixture.
    """
    return _posteriors(X, y, n_components=n_components, variance=variance, random_state=random_state,
                       covariance_type=covariance_type, max_fit_rows=max_fit_rows, max_dims=max_dims,
                       max_components=max_components)[0]


def _posteriors(
    X: ArrayLike,
    y: ArrayLike,
    *,
    n_components: int | None = None,
    variance: float = 0.8,
    random_state: int = 123,
    covariance_type: str = "full",
    max_fit_rows: int | None = MAX_FIT_ROWS,
    max_dims: int | None = MAX_DIMS,
    max_components: int | None = MAX_COMPONENTS,
) -> tuple[np.ndarray, np.ndarray, int]:
    """PCA + mixture posteriors, the validated labels and the class count (see ``nleep``)."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    X, y, C = check_features_labels(X, y)
    n = X.shape[0]
    if not 0 < variance <= 1:
        raise ValueError(f"variance must be in (0, 1], got {variance}")
    max_fit_rows = _cap(max_fit_rows, "max_fit_rows")
    max_dims = _cap(max_dims, "max_dims")
    max_components = _cap(max_components, "max_components")
    K = 5 * C if n_components is None else check_int_param("n_components", n_components, low=1, high=100_000)
    if max_components is not None and K > max_components:
        K = max(max_components, C)
    if covariance_type not in ("full", "tied", "diag", "spherical"):
        raise ValueError(f"covariance_type must be full, tied, diag or spherical, got {covariance_type!r}")
    fit_rows = None
    if max_fit_rows is not None and n > max_fit_rows:
        fit_rows = np.sort(np.random.default_rng(random_state).choice(n, size=max_fit_rows, replace=False))
    m = n if fit_rows is None else fit_rows.size
    if m < K:
        raise ValueError(
            f"nleep fits a Gaussian mixture with {K} components (5 per class) but there are only "
            f"{m} samples to fit it on; pass n_components < {m} or use more samples"
        )
    n_pca = variance if variance < 1 else None
    # float32 after PCA as in the reference: the mixture's k-means initialisation and EM
    # depend on it, and matching the reference's optimum needs the same input.
    pca = PCA(n_components=n_pca, svd_solver="full")
    if fit_rows is None:
        Z = pca.fit_transform(X)
    else:
        Z = pca.fit(X[fit_rows]).transform(X)
    if max_dims is not None and Z.shape[1] > max_dims:
        Z = Z[:, :max_dims]  # PCA components come in decreasing variance
    Z = Z.astype(np.float32)
    gmm = GaussianMixture(n_components=K, random_state=random_state, covariance_type=covariance_type)
    try:
        # EM makes many small (d' x d') BLAS calls per component: one BLAS thread is faster
        # there, and much faster on a busy machine (threads spin-wait).
        with threadpool_limits(limits=1, user_api="blas"):
            gmm.fit(Z if fit_rows is None else Z[fit_rows])
            posteriors = gmm.predict_proba(Z)
    except ValueError as exc:
        raise ValueError(
            f"nleep: the {K}-component {covariance_type}-covariance Gaussian mixture could not be "
            f"fitted on {m} samples in {Z.shape[1]} PCA dimensions (some components have singular covariance); pass a "
            f"smaller n_components or use more samples. sklearn said: {str(exc)[:160]}"
        ) from None
    return np.asarray(posteriors, dtype=np.float64), y, C
