"""Divergences and similarities between two domains' representations.

Every function takes two feature matrices ``X`` (n, d) and ``Y`` (m, d) (e.g. the base
encoder's embeddings of a target and of a source dataset) and returns a float. All are
*distances* (lower = closer domains) except ``mean_embedding_similarity`` (higher = closer).
Through the package entry point the second argument is the other domain::

    estimators.score("mmd", X_target, X_source)

Inputs are validated with ``check_two_domains`` (float64, finite, same d, >= 2 rows each).
"""
from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from ._validation import check_float_param, check_int_param, check_two_domains

#: the most projections ``sliced_wasserstein`` accepts (memory: (n+m) x L floats)
MAX_PROJECTIONS = 10_000

__all__ = [
    "mmd",
    "frechet_distance",
    "gaussian_kl",
    "gaussian_js",
    "sliced_wasserstein",
    "proxy_a_distance",
    "mean_embedding_similarity",
]

_MEDIAN_POINTS = 2000  # pooled points used for the median heuristic (all if fewer)
_BLOCK_ENTRIES = 1 << 22  # kernel entries materialised at once (~32 MB of float64)


def _subsample(A: np.ndarray, k: int | None, rng: np.random.Generator) -> np.ndarray:
    if k is None or A.shape[0] <= k:
        return A
    return A[np.sort(rng.choice(A.shape[0], size=k, replace=False))]


def _check_max_samples(max_samples: float | None) -> int | None:
    if max_samples is None:
        return None
    return check_int_param("max_samples", max_samples, low=2, high=10_000_000)


def _sq_dists(A: np.ndarray, B: np.ndarray, a2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    D = A @ B.T
    D *= -2.0
    D += a2[:, None]
    D += b2[None, :]
    np.maximum(D, 0.0, out=D)
    out: np.ndarray = D
    return out


# ---------------------------------------------------------------------------- MMD
def mmd(X: ArrayLike, Y: ArrayLike, *, kernel: str = "rbf", bandwidth: float | str = "median", unbiased: bool = True,
        max_samples: int | None = None, seed: int = 0) -> float:
    """Squared maximum mean discrepancy, MMD^2 (Gretton et al., JMLR 2012). Lower = closer.

    Unbiased U-statistic (``unbiased=True``)::

        MMD^2_u = sum_{i!=j} k(x_i,x_j)/(n(n-1)) + sum_{i!=j} k(y_i,y_j)/(m(m-1))
                  - 2 sum_{i,j} k(x_i,y_j)/(nm)

    (unbiased for the population MMD^2, so it can be slightly negative for close domains and
    is not exactly 0 for ``mmd(X, X)``); ``unbiased=False`` gives the V-statistic (diagonals
    included, >= 0, exactly 0 for identical samples).
    ``kernel="rbf"``: k(a,b) = exp(-|a-b|^2 / (2 s^2)) with ``bandwidth`` s a float or
    ``"median"`` = the median pairwise Euclidean distance of the pooled sample (computed on at
    most 2000 pooled points drawn with ``seed``). ``kernel="linear"``: k(a,b) = a.b (then the
    V-statistic is |mean X - mean Y|^2).
    Needs: two feature matrices, no labels. Cost O((n+m)^2 d) time (only half the kernel
    matrix is evaluated, by symmetry), O(4M entries) extra memory
    (summed block-wise, never stored). ``max_samples`` caps each domain by seeded subsampling
    without replacement (e.g. 2000 for interactive use).
    """
    X, Y = check_two_domains(X, Y)
    ms = _check_max_samples(max_samples)
    if kernel not in ("rbf", "linear"):
        raise ValueError(f"kernel must be 'rbf' or 'linear', got {kernel!r}")
    rng = np.random.default_rng(seed)
    X, Y = _subsample(X, ms, rng), _subsample(Y, ms, rng)
    n, m = X.shape[0], Y.shape[0]
    Z = np.concatenate([X, Y])
    z2 = np.einsum("ij,ij->i", Z, Z)
    N = n + m

    if kernel == "rbf":
        if isinstance(bandwidth, str):
            if bandwidth != "median":
                raise ValueError(f"bandwidth must be a positive number or 'median', got {bandwidth!r}")
            P = _subsample(Z, _MEDIAN_POINTS, rng)
            p2 = np.einsum("ij,ij->i", P, P)
            iu = np.triu_indices(P.shape[0], k=1)
            sigma = float(np.median(np.sqrt(_sq_dists(P, P, p2, p2)[iu])))
            if not sigma > 0:
                raise ValueError("median heuristic bandwidth is 0 (most pooled points coincide); pass bandwidth=")
        else:
            sigma = float(bandwidth)
            if not (sigma > 0 and math.isfinite(sigma)):
                raise ValueError(f"bandwidth must be a positive number or 'median', got {bandwidth!r}")
        gamma = 1.0 / (2.0 * sigma * sigma)

    # Block-wise sums of the kernel over the XX, XY, YY quadrants and the diagonal. By symmetry
    # only the upper triangle is evaluated: block rows i0:i1 against columns i0:N, the square
    # part counted once (it holds both orders), the part right of it twice (XY pairs once:
    # an X index is always below a Y index).
    s_xx = s_yy = s_xy = diag_x = diag_y = 0.0
    rows = max(1, _BLOCK_ENTRIES // N)
    for i0 in range(0, N, rows):
        i1 = min(N, i0 + rows)
        b = i1 - i0
        if kernel == "rbf":
            K = _sq_dists(Z[i0:i1], Z[i0:], z2[i0:i1], z2[i0:])
            K *= -gamma
            np.exp(K, out=K)
        else:
            K = Z[i0:i1] @ Z[i0:].T
        Kd, Ku = K[:, :b], K[:, b:]
        diag = np.diagonal(Kd)
        nx = max(0, min(i1, n) - i0)  # rows (and square-part columns) of this block in X
        ux = max(0, n - i1)  # columns of Ku in X
        if nx:
            s_xx += float(Kd[:nx, :nx].sum()) + 2.0 * float(Ku[:nx, :ux].sum())
            s_xy += float(Kd[:nx, nx:].sum()) + float(Ku[:nx, ux:].sum())
            diag_x += float(diag[:nx].sum())
        if nx < b:
            s_yy += float(Kd[nx:, nx:].sum()) + 2.0 * float(Ku[nx:].sum())
            diag_y += float(diag[nx:].sum())
    if unbiased:
        value = (s_xx - diag_x) / (n * (n - 1)) + (s_yy - diag_y) / (m * (m - 1)) - 2.0 * s_xy / (n * m)
    else:
        value = s_xx / n**2 + s_yy / m**2 - 2.0 * s_xy / (n * m)
    return float(value)


# ---------------------------------------------------------------------------- Gaussian fits
def _moments(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = A.mean(axis=0)
    Ac = A - mu
    S = Ac.T @ Ac
    S /= A.shape[0] - 1
    return mu, S


def _check_ridge(ridge: float) -> float:
    if not (ridge >= 0 and math.isfinite(ridge)):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge}")
    return float(ridge)


def _psd_sqrt(S: np.ndarray) -> np.ndarray:
    e, V = np.linalg.eigh(S)
    np.maximum(e, 0.0, out=e)
    root: np.ndarray = (V * np.sqrt(e)) @ V.T
    return root


def _sum_sqrt_eigvalsh(M: np.ndarray) -> float:
    M = (M + M.T) / 2
    return float(np.sqrt(np.maximum(np.linalg.eigvalsh(M), 0.0)).sum())


def frechet_distance(X: ArrayLike, Y: ArrayLike, *, ridge: float = 1e-10) -> float:
    """Fréchet (2-Wasserstein) distance between Gaussians fitted to X and Y, squared, as in
    FID (Heusel et al., NeurIPS 2017; Dowson & Landau 1982). Lower = closer.

    ``|mu_X - mu_Y|^2 + tr(S_X + S_Y - 2 (S_X S_Y)^{1/2})`` with sample means / unbiased
    covariances. ``tr (S_X S_Y)^{1/2}`` = sum of square roots of the eigenvalues of S_X S_Y,
    always taken from a *symmetric* PSD product with the same spectrum (no ``scipy.sqrtm`` of a
    non-symmetric matrix, no complex round-off):

    * n, m >= d: ``L^T S_Y L`` with ``S_X + lam I = L L^T`` (Cholesky; if that fails, the
      eigendecomposition square root of S_X with negative round-off eigenvalues clipped).
      ``lam = ridge * (tr S_X + tr S_Y) / (2d)`` is added to *both* covariances (default
      ridge 1e-10: guards round-off only; identical inputs still give 0).
    * min(n, m) < d (rank-deficient covariances): the nuclear norm of
      ``Xc Yc^T / sqrt((n-1)(m-1))`` (its squared singular values are the nonzero eigenvalues
      of S_X S_Y), exact and never forms a d x d matrix; no ridge needed.

    Needs: two feature matrices. Cost O((n+m) d^2 + d^3), or O(n m d + min(n,m)^2 max(n,m))
    when min(n, m) < d.
    """
    X, Y = check_two_domains(X, Y)
    ridge = _check_ridge(ridge)
    n, d = X.shape
    m = Y.shape[0]
    mx, my = X.mean(axis=0), Y.mean(axis=0)
    diff = mx - my
    if min(n, m) < d:
        Xc, Yc = X - mx, Y - my
        tr_x = float(np.einsum("ij,ij->", Xc, Xc)) / (n - 1)
        tr_y = float(np.einsum("ij,ij->", Yc, Yc)) / (m - 1)
        s = np.linalg.svd(Xc @ Yc.T, compute_uv=False)
        tr_sqrt = float(s.sum()) / math.sqrt((n - 1) * (m - 1))
        trace_sum = tr_x + tr_y
    else:
        _, Sx = _moments(X)
        _, Sy = _moments(Y)
        lam = ridge * (np.trace(Sx) + np.trace(Sy)) / (2 * d)
        Sx[np.diag_indices(d)] += lam
        Sy[np.diag_indices(d)] += lam
        try:
            L = np.linalg.cholesky(Sx)
            tr_sqrt = _sum_sqrt_eigvalsh(L.T @ Sy @ L)
        except np.linalg.LinAlgError:
            A = _psd_sqrt(Sx)
            tr_sqrt = _sum_sqrt_eigvalsh(A @ Sy @ A)
        trace_sum = float(np.trace(Sx) + np.trace(Sy))
    value = float(diff @ diff) + trace_sum - 2.0 * float(tr_sqrt)
    return float(max(value, 0.0))


def _gauss_kl(mu0: np.ndarray, S0: np.ndarray, mu1: np.ndarray, S1: np.ndarray) -> float:
    """KL(N(mu0,S0) || N(mu1,S1)) for positive-definite S0, S1 (Cholesky)."""
    d = mu0.shape[0]
    try:
        L1 = np.linalg.cholesky(S1)
        L0 = np.linalg.cholesky(S0)
    except np.linalg.LinAlgError:
        raise ValueError(
            "a covariance matrix is not positive definite even after the ridge; increase ridge= "
            "(e.g. 1e-3) or reduce the dimension (PCA) when n is not much larger than d"
        ) from None
    from scipy.linalg import solve_triangular

    B = solve_triangular(L1, L0, lower=True)  # tr(S1^-1 S0) = |L1^-1 L0|_F^2
    z = solve_triangular(L1, mu1 - mu0, lower=True)
    logdet1 = 2.0 * np.log(np.diag(L1)).sum()
    logdet0 = 2.0 * np.log(np.diag(L0)).sum()
    return 0.5 * (float(np.einsum("ij,ij->", B, B)) + float(z @ z) - int(d) + float(logdet1 - logdet0))


def _ridged_moments(X: np.ndarray, Y: np.ndarray,
                    ridge: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    mx, Sx = _moments(X)
    my, Sy = _moments(Y)
    d = X.shape[1]
    lam = ridge * (np.trace(Sx) + np.trace(Sy)) / (2 * d)
    if lam <= 0:
        lam = ridge
    Sx[np.diag_indices(d)] += lam
    Sy[np.diag_indices(d)] += lam
    return mx, Sx, my, Sy


def gaussian_kl(X: ArrayLike, Y: ArrayLike, *, ridge: float = 1e-6) -> float:
    """KL(N_X || N_Y) between Gaussians fitted to the two domains. Lower = closer; asymmetric.

    ``0.5 [tr(S_Y^-1 S_X) + (mu_Y-mu_X)^T S_Y^-1 (mu_Y-mu_X) - d + ln det S_Y - ln det S_X]``
    with sample means and unbiased covariances, each regularised as ``S + lam I``,
    ``lam = ridge * (tr S_X + tr S_Y) / (2d)`` (the same lam for both, so KL(X, X) = 0).
    With n or m not much larger than d the value is dominated by the ridge: compare such
    values only at a fixed ridge. Needs: two feature matrices. Cost O((n+m) d^2 + d^3).
    """
    X, Y = check_two_domains(X, Y)
    mx, Sx, my, Sy = _ridged_moments(X, Y, _check_ridge(ridge))
    return max(float(_gauss_kl(mx, Sx, my, Sy)), 0.0)


def gaussian_js(X: ArrayLike, Y: ArrayLike, *, ridge: float = 1e-6) -> float:
    """Jensen–Shannon divergence between Gaussians fitted to X and Y, through the
    moment-matched mixture Gaussian. Lower = closer; symmetric; 0 iff the fits are equal.

    ``JS_G = 0.5 KL(N_X || N_M) + 0.5 KL(N_Y || N_M)`` where ``N_M`` is the Gaussian with the
    mean and covariance of the equal-weight mixture 0.5 N_X + 0.5 N_Y:
    ``mu_M = (mu_X + mu_Y)/2``, ``S_M = (S_X + S_Y)/2 + (mu_X - mu_Y)(mu_X - mu_Y)^T / 4``.
    (The exact JS uses the mixture itself, which has no closed form; since for any Q
    ``0.5 KL(P||Q) + 0.5 KL(R||Q) = JS(P,R) + KL(M||Q)``, this is an upper bound on the exact
    JS of the two Gaussians, the tightest one among Gaussian Q; it is not capped at ln 2.)
    Covariances ridged as in ``gaussian_kl``. Cost O((n+m) d^2 + d^3).
    """
    X, Y = check_two_domains(X, Y)
    mx, Sx, my, Sy = _ridged_moments(X, Y, _check_ridge(ridge))
    mu_m = 0.5 * (mx + my)
    diff = mx - my
    Sm = 0.5 * (Sx + Sy) + 0.25 * np.outer(diff, diff)
    return max(0.5 * _gauss_kl(mx, Sx, mu_m, Sm) + 0.5 * _gauss_kl(my, Sy, mu_m, Sm), 0.0)


# ---------------------------------------------------------------------------- sliced Wasserstein
def _wasserstein_1d_pp(U: np.ndarray, V: np.ndarray, p: float) -> np.ndarray:
    """Exact W_p^p between the empirical distributions of each row of U (L, n) and V (L, m).

    ``W_p^p = int_0^1 |F^-1(t) - G^-1(t)|^p dt`` with the quantile functions piecewise constant
    on the merged grid {i/n} U {j/m}; uniform weights, any n, m."""
    n, m = U.shape[1], V.shape[1]
    Us, Vs = np.sort(U, axis=1), np.sort(V, axis=1)
    grid = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
    grid[-1] = 1.0
    w = np.diff(grid, prepend=0.0)
    mid = grid - 0.5 * w
    iu = np.minimum((mid * n).astype(np.int64), n - 1)
    iv = np.minimum((mid * m).astype(np.int64), m - 1)
    D = np.abs(Us[:, iu] - Vs[:, iv])
    wpp: np.ndarray = (D**p) @ w
    return wpp


def sliced_wasserstein(X: ArrayLike, Y: ArrayLike, *, n_projections: int = 128, p: float = 2, seed: int = 0) -> float:
    """Sliced p-Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015). Lower = closer.

    ``SW_p = ( mean_l W_p^p(theta_l . X, theta_l . Y) )^{1/p}`` over ``n_projections``
    directions drawn uniformly on the unit sphere (seeded). Each 1-D W_p is exact for unequal
    n, m by quantile matching on the merged grid {i/n} U {j/m}. Monte-Carlo error in the
    directions ~ 1/sqrt(n_projections). Needs: two feature matrices. Cost
    O(L (n+m) d + L (n+m) log(n+m)), L = n_projections.
    """
    X, Y = check_two_domains(X, Y)
    n_projections = check_int_param("n_projections", n_projections, low=1, high=MAX_PROJECTIONS)
    p = check_float_param("p", p, low=1.0, high=100.0)
    seed = check_int_param("seed", seed, low=0, high=2**63 - 1)
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((X.shape[1], int(n_projections)))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    wpp = _wasserstein_1d_pp((X @ theta).T, (Y @ theta).T, float(p))
    return float(np.mean(wpp) ** (1.0 / p))


# ---------------------------------------------------------------------------- proxy-A distance
def _stratified_folds(t: np.ndarray, cv: int, rng: np.random.Generator) -> np.ndarray:
    """Fold id per row: each class shuffled and dealt round-robin into ``cv`` folds."""
    fold = np.empty(t.shape[0], dtype=np.int64)
    for c in (0, 1):
        idx = np.flatnonzero(t == c)
        fold[idx[rng.permutation(idx.shape[0])]] = np.arange(idx.shape[0]) % cv
    return fold


def _ridge_domain_predictions(Z: np.ndarray, t: np.ndarray, fold: np.ndarray, cv: int,
                              alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Held-out predictions of a class-balanced ridge (least-squares) classifier, k-fold.

    Features standardised once (label-free), targets +-1, sample weights N / (2 n_class),
    intercept unpenalised. One pass builds per-fold weighted Gram matrices; each fold's model
    solves ``(G - G_f + alpha I') beta = r - r_f``. Returns (predictions, labels) in fold
    order (rows regrouped by fold; the balanced error does not depend on row order)."""
    N, d = Z.shape
    order = np.argsort(fold, kind="stable")
    bounds = np.searchsorted(fold[order], np.arange(cv + 1))
    t = t[order]
    mu, sd = Z.mean(axis=0), Z.std(axis=0)
    sd[sd == 0] = 1.0
    Za = np.empty((N, d + 1))
    np.subtract(Z[order], mu, out=Za[:, :d])
    Za[:, :d] /= sd
    Za[:, d] = 1.0
    counts = np.bincount(t, minlength=2)
    w = (N / (2.0 * counts))[t]
    wt = w * np.where(t == 1, 1.0, -1.0)
    Gs, rs = [], []
    for f in range(cv):
        sl = slice(bounds[f], bounds[f + 1])
        Gs.append((Za[sl] * w[sl, None]).T @ Za[sl])
        rs.append(Za[sl].T @ wt[sl])
    G, r = sum(Gs), sum(rs)
    pen = np.full(d + 1, float(alpha))
    pen[d] = 0.0
    pred = np.empty(N, dtype=np.int64)
    from scipy.linalg import cho_factor, cho_solve

    for f in range(cv):
        sl = slice(bounds[f], bounds[f + 1])
        A = G - Gs[f]
        A[np.diag_indices(d + 1)] += pen
        beta = cho_solve(cho_factor(A, overwrite_a=True), r - rs[f])
        pred[sl] = (Za[sl] @ beta >= 0).astype(np.int64)
    return pred, t


def proxy_a_distance(X: ArrayLike, Y: ArrayLike, *, seed: int = 0, cv: int = 5, classifier: str = "ridge",
                     alpha: float = 1.0, C: float = 1.0, max_samples: int | None = None) -> float:
    """Proxy A-distance (Ben-David et al., NeurIPS 2007): ``2 (1 - 2 err)``. Lower = closer.

    ``err`` is the held-out *balanced* error (mean of the two per-domain error rates, so
    unequal n, m do not bias it) of a linear domain classifier (domain X = 0, Y = 1) under
    ``cv``-fold stratified cross-validation, seeded. ``classifier="ridge"`` (default): a
    class-balanced least-squares classifier on standardised features with L2 penalty
    ``alpha`` (closed form, O((n+m) d^2 + cv d^3));
    ``classifier="logistic"``: scikit-learn L2 logistic regression (``C``, balanced class
    weights, standardised features), O(cv * iters * (n+m) d), much slower at large n.
    Range [-2, 2]: ~0 for indistinguishable domains, 2 for linearly separable ones; values
    <= 0 mean "no better than chance" (passing the *same* points as both domains gives clearly
    negative values, because each held-out point's duplicate sits in the training folds with
    the other label). ``max_samples`` caps each domain by seeded subsampling.
    Needs: two feature matrices.
    """
    X, Y = check_two_domains(X, Y)
    ms = _check_max_samples(max_samples)
    cv = check_int_param("cv", cv, low=2, high=100)
    seed = check_int_param("seed", seed, low=0, high=2**63 - 1)
    if classifier not in ("ridge", "logistic"):
        raise ValueError(f"classifier must be 'ridge' or 'logistic', got {classifier!r}")
    if not (alpha > 0 and math.isfinite(alpha)) or not (C > 0 and math.isfinite(C)):
        raise ValueError(f"alpha and C must be positive numbers, got alpha={alpha}, C={C}")
    rng = np.random.default_rng(seed)
    X, Y = _subsample(X, ms, rng), _subsample(Y, ms, rng)
    if min(X.shape[0], Y.shape[0]) < cv:
        raise ValueError(f"each domain needs at least cv={cv} samples for cross-validation")
    Z = np.concatenate([X, Y])
    t = np.concatenate([np.zeros(X.shape[0], np.int64), np.ones(Y.shape[0], np.int64)])
    fold = _stratified_folds(t, cv, rng)
    if classifier == "ridge":
        pred, t = _ridge_domain_predictions(Z, t, fold, cv, alpha)
    else:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import PredefinedSplit, cross_val_predict
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=1000))
        pred = cross_val_predict(clf, Z, t, cv=PredefinedSplit(fold))
    err = 0.5 * (np.mean(pred[t == 0] != 0) + np.mean(pred[t == 1] != 1))
    return float(2.0 * (1.0 - 2.0 * err))


# ---------------------------------------------------------------------------- SEmb
def mean_embedding_similarity(X: ArrayLike, Y: ArrayLike) -> float:
    """SEmb (Poth et al., EMNLP 2021): cosine similarity of the two domains' mean embeddings,
    ``cos(mean X, mean Y)``. HIGHER = closer (the only similarity here), range [-1, 1].
    Needs: two feature matrices (same encoder). Cost O((n+m) d).
    """
    X, Y = check_two_domains(X, Y)
    a, b = X.mean(axis=0), Y.mean(axis=0)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        raise ValueError("a domain's mean embedding is the zero vector; SEmb (cosine of means) is undefined")
    return float(np.clip(a @ b / (na * nb), -1.0, 1.0))
