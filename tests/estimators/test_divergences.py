"""Domain divergences / similarities: closed forms, identities, symmetry, monotonicity, validation."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, linalg, stats

import estimators
from estimators import divergences as dv

DOMAIN_NAMES = [n for n in estimators.names() if estimators.info(n).needs == "domains"]
DISTANCES = [n for n in DOMAIN_NAMES if not estimators.info(n).higher_is_better]


def _exact_sample(mu, S, n, seed):
    """n points whose sample mean is exactly mu and unbiased sample covariance exactly S."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, len(mu)))
    Z -= Z.mean(0)
    L = np.linalg.cholesky(np.atleast_2d(np.cov(Z, rowvar=False)))
    Z = linalg.solve_triangular(L, Z.T, lower=True).T  # now cov(Z) = I exactly
    return Z @ np.linalg.cholesky(S).T + mu


def _spd(d, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d))
    return scale * (A @ A.T / d + 0.5 * np.eye(d))


def _kl_closed(m0, S0, m1, S1):
    d = len(m0)
    S1i = np.linalg.inv(S1)
    dm = m1 - m0
    return 0.5 * (np.trace(S1i @ S0) + dm @ S1i @ dm - d + np.linalg.slogdet(S1)[1] - np.linalg.slogdet(S0)[1])


D = 4
MU0, MU1 = np.zeros(D), np.array([0.5, -1.0, 0.0, 2.0])
S0, S1 = _spd(D, 1), _spd(D, 2, scale=2.0)


@pytest.fixture(scope="module")
def exact_pair():
    return _exact_sample(MU0, S0, 500, 3), _exact_sample(MU1, S1, 700, 4)


# ------------------------------------------------------------------ closed forms
def test_gaussian_kl_matches_closed_form(exact_pair):
    X, Y = exact_pair
    assert dv.gaussian_kl(X, Y, ridge=0.0) == pytest.approx(_kl_closed(MU0, S0, MU1, S1), rel=1e-9)
    assert dv.gaussian_kl(Y, X, ridge=0.0) == pytest.approx(_kl_closed(MU1, S1, MU0, S0), rel=1e-9)
    # default ridge moves it only slightly
    assert dv.gaussian_kl(X, Y) == pytest.approx(_kl_closed(MU0, S0, MU1, S1), rel=1e-4)


def test_frechet_matches_closed_form(exact_pair):
    X, Y = exact_pair
    covmean = linalg.sqrtm(S0 @ S1).real
    expected = float((MU0 - MU1) @ (MU0 - MU1) + np.trace(S0 + S1 - 2 * covmean))
    assert dv.frechet_distance(X, Y) == pytest.approx(expected, rel=1e-8)
    assert estimators.score("frechet", X, Y) == pytest.approx(expected, rel=1e-8)


def test_frechet_1d_is_w2_between_gaussians():
    X = _exact_sample(np.array([1.0]), np.array([[4.0]]), 300, 5)
    Y = _exact_sample(np.array([-0.5]), np.array([[0.25]]), 200, 6)
    assert dv.frechet_distance(X, Y) == pytest.approx(1.5**2 + (2.0 - 0.5) ** 2, rel=1e-9)


def test_frechet_both_routes_agree():
    # min(n, m) < d uses the nuclear norm of Xc Yc^T; otherwise Cholesky + symmetric eigvals
    rng = np.random.default_rng(27)
    X, Y = rng.normal(size=(30, 20)), rng.normal(size=(25, 20)) @ _spd(20, 3) + 0.2
    v_cov = dv.frechet_distance(X, Y, ridge=0.0)
    v_nuc = dv.frechet_distance(X, Y[:15], ridge=0.0)  # m=15 < d
    Sx, Sy = np.cov(X, rowvar=False), np.cov(Y[:15], rowvar=False)
    ref = ((X.mean(0) - Y[:15].mean(0)) ** 2).sum() + np.trace(Sx + Sy - 2 * linalg.sqrtm(Sx @ Sy).real)
    assert v_nuc == pytest.approx(ref, rel=1e-6)
    Sy = np.cov(Y, rowvar=False)
    ref = ((X.mean(0) - Y.mean(0)) ** 2).sum() + np.trace(Sx + Sy - 2 * linalg.sqrtm(Sx @ Sy).real)
    assert v_cov == pytest.approx(ref, rel=1e-9)


def test_frechet_singular_covariances_are_fine():
    rng = np.random.default_rng(7)
    X, Y = rng.normal(size=(10, 40)), rng.normal(size=(12, 40)) + 0.3  # n < d: rank-deficient
    v = dv.frechet_distance(X, Y)
    Sx, Sy = np.cov(X, rowvar=False), np.cov(Y, rowvar=False)
    ref = ((X.mean(0) - Y.mean(0)) ** 2).sum() + np.trace(Sx + Sy - 2 * linalg.sqrtm(Sx @ Sy).real)
    assert v == pytest.approx(ref, rel=1e-6)


def test_gaussian_js_is_kl_to_moment_matched_mixture(exact_pair):
    X, Y = exact_pair
    mm = 0.5 * (MU0 + MU1)
    Sm = 0.5 * (S0 + S1) + 0.25 * np.outer(MU0 - MU1, MU0 - MU1)
    expected = 0.5 * _kl_closed(MU0, S0, mm, Sm) + 0.5 * _kl_closed(MU1, S1, mm, Sm)
    assert dv.gaussian_js(X, Y, ridge=0.0) == pytest.approx(expected, rel=1e-9)


def test_gaussian_js_upper_bounds_exact_js_in_1d():
    X = _exact_sample(np.array([0.0]), np.array([[1.0]]), 400, 8)
    Y = _exact_sample(np.array([1.0]), np.array([[2.25]]), 400, 9)
    p, q = stats.norm(0, 1).pdf, stats.norm(1, 1.5).pdf

    def integrand(t):
        m = 0.5 * (p(t) + q(t))
        return 0.5 * p(t) * math.log(p(t) / m) + 0.5 * q(t) * math.log(q(t) / m)

    exact = integrate.quad(integrand, -20, 20)[0]
    approx = dv.gaussian_js(X, Y, ridge=0.0)
    assert exact <= approx < exact * 1.5
    assert approx < math.log(2)


def test_large_sample_estimates_converge():
    rng = np.random.default_rng(10)
    X = rng.multivariate_normal(MU0, S0, size=20000)
    Y = rng.multivariate_normal(MU1, S1, size=20000)
    assert dv.gaussian_kl(X, Y) == pytest.approx(_kl_closed(MU0, S0, MU1, S1), rel=0.03)
    covmean = linalg.sqrtm(S0 @ S1).real
    fd = float((MU0 - MU1) @ (MU0 - MU1) + np.trace(S0 + S1 - 2 * covmean))
    assert dv.frechet_distance(X, Y) == pytest.approx(fd, rel=0.03)


def test_linear_kernel_mmd_is_mean_difference():
    rng = np.random.default_rng(11)
    X, Y = rng.normal(size=(50, 3)), rng.normal(size=(70, 3)) + 1
    v = dv.mmd(X, Y, kernel="linear", unbiased=False)
    assert v == pytest.approx(float(((X.mean(0) - Y.mean(0)) ** 2).sum()), rel=1e-10)


def _mmd_brute(X, Y, sigma, unbiased):
    def k(A, B):
        return np.exp(-((A[:, None, :] - B[None, :, :]) ** 2).sum(-1) / (2 * sigma**2))

    Kxx, Kyy, Kxy = k(X, X), k(Y, Y), k(X, Y)
    n, m = len(X), len(Y)
    if unbiased:
        return ((Kxx.sum() - np.trace(Kxx)) / (n * (n - 1)) + (Kyy.sum() - np.trace(Kyy)) / (m * (m - 1))
                - 2 * Kxy.mean())
    return Kxx.mean() + Kyy.mean() - 2 * Kxy.mean()


@pytest.mark.parametrize("unbiased", [True, False])
def test_mmd_matches_brute_force_with_median_heuristic(monkeypatch, unbiased):
    rng = np.random.default_rng(12)
    X, Y = rng.normal(size=(37, 5)), rng.normal(size=(23, 5)) * 1.3 + 0.4
    Z = np.vstack([X, Y])
    dist = np.sqrt(((Z[:, None] - Z[None]) ** 2).sum(-1))[np.triu_indices(len(Z), 1)]
    expected = _mmd_brute(X, Y, np.median(dist), unbiased)
    assert dv.mmd(X, Y, unbiased=unbiased) == pytest.approx(expected, rel=1e-10)
    for rows in (1, 7, 36, 37, 38):  # block rows; 7 and 36 straddle the X/Y border at row 37
        monkeypatch.setattr(dv, "_BLOCK_ENTRIES", rows * 60)
        assert dv.mmd(X, Y, unbiased=unbiased) == pytest.approx(expected, rel=1e-10)
    lin = X @ X.T, Y @ Y.T, X @ Y.T
    if unbiased:
        lin_expected = ((lin[0].sum() - np.trace(lin[0])) / (37 * 36) + (lin[1].sum() - np.trace(lin[1])) / (23 * 22)
                        - 2 * lin[2].mean())
    else:
        lin_expected = lin[0].mean() + lin[1].mean() - 2 * lin[2].mean()
    assert dv.mmd(X, Y, kernel="linear", unbiased=unbiased) == pytest.approx(lin_expected, rel=1e-10)
    assert dv.mmd(X, Y, bandwidth=0.7, unbiased=unbiased) == pytest.approx(_mmd_brute(X, Y, 0.7, unbiased), rel=1e-10)


def test_mmd_max_samples_subsamples():
    rng = np.random.default_rng(13)
    X, Y = rng.normal(size=(400, 3)), rng.normal(size=(300, 3)) + 1.0
    full = dv.mmd(X, Y)
    sub = dv.mmd(X, Y, max_samples=150, seed=1)
    assert sub != full and sub == pytest.approx(full, rel=0.3)
    assert dv.mmd(X, Y, max_samples=150, seed=1) == sub


def test_sliced_wasserstein_1d_is_exact_wasserstein():
    rng = np.random.default_rng(14)
    x, y = rng.normal(size=(31, 1)), rng.exponential(size=(17, 1))  # unequal n, m
    # in 1-D every projection is +-1, so SW_p = W_p exactly
    w1 = stats.wasserstein_distance(x[:, 0], y[:, 0])
    assert dv.sliced_wasserstein(x, y, p=1, n_projections=5) == pytest.approx(w1, rel=1e-12)
    # W_2 for equal sizes: sorted matching
    x2, y2 = rng.normal(size=(40, 1)), rng.normal(size=(40, 1)) * 2
    w2 = math.sqrt(np.mean((np.sort(x2[:, 0]) - np.sort(y2[:, 0])) ** 2))
    assert dv.sliced_wasserstein(x2, y2, n_projections=3) == pytest.approx(w2, rel=1e-12)


def test_sliced_wasserstein_of_a_shift():
    rng = np.random.default_rng(15)
    X = rng.normal(size=(300, 8))
    c = np.full(8, 0.75)
    # W_2 between a point cloud and its translate along theta is |theta.c|; mean (theta.c)^2 = |c|^2 / d
    v = dv.sliced_wasserstein(X, X + c, n_projections=4000)
    assert v == pytest.approx(math.sqrt(c @ c / 8), rel=0.05)


@pytest.mark.parametrize("classifier", ["ridge", "logistic"])
def test_proxy_a_distance_extremes(classifier):
    rng = np.random.default_rng(16)
    X, Y = rng.normal(size=(300, 5)), rng.normal(size=(200, 5))
    assert abs(dv.proxy_a_distance(X, Y, classifier=classifier)) < 0.35
    assert dv.proxy_a_distance(X, Y + 10.0, classifier=classifier) == pytest.approx(2.0)
    mid = [dv.proxy_a_distance(X, Y + 0.8, classifier=c) for c in ("ridge", "logistic")]
    assert 0.5 < mid[0] < 1.9 and mid[0] == pytest.approx(mid[1], abs=0.15)


def test_proxy_a_distance_ridge_matches_sklearn_ridge_per_fold():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(26)
    X, Y = rng.normal(size=(90, 4)), rng.normal(size=(60, 4)) * 1.4 + 0.3
    Z = np.vstack([X, Y])
    t = np.r_[np.zeros(90, int), np.ones(60, int)]
    fold = dv._stratified_folds(t, 4, np.random.default_rng(5))  # the stream proxy_a_distance(seed=5) uses
    assert sorted(np.bincount(fold[t == 0])) == [22, 22, 23, 23]
    Zs = (Z - Z.mean(0)) / Z.std(0)
    w = np.where(t == 1, 150 / 120, 150 / 180)
    pred = np.empty_like(t)
    for f in range(4):
        tr = fold != f
        model = Ridge(alpha=2.0).fit(Zs[tr], np.where(t[tr] == 1, 1.0, -1.0), sample_weight=w[tr])
        pred[~tr] = model.predict(Zs[~tr]) >= 0
    err = 0.5 * ((pred[t == 0] != 0).mean() + (pred[t == 1] != 1).mean())
    assert dv.proxy_a_distance(X, Y, seed=5, cv=4, alpha=2.0) == pytest.approx(2 * (1 - 2 * err), abs=1e-12)


def test_semb_values():
    rng = np.random.default_rng(17)
    X = rng.normal(size=(50, 4)) + np.array([1.0, 2.0, 0.0, 0.0])
    assert dv.mean_embedding_similarity(X, X) == pytest.approx(1.0)
    Y = -X
    assert estimators.score("semb", X, Y) == pytest.approx(-1.0)
    mu_x, mu_y = X.mean(0), (X * 3 + np.array([0, 0, 5.0, 0])).mean(0)
    expected = mu_x @ mu_y / np.linalg.norm(mu_x) / np.linalg.norm(mu_y)
    assert dv.mean_embedding_similarity(X, X * 3 + np.array([0, 0, 5.0, 0])) == pytest.approx(expected)
    with pytest.raises(ValueError, match="zero vector"):
        dv.mean_embedding_similarity(X, np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))


# ------------------------------------------------------------------ generic properties
@pytest.fixture(scope="module")
def clouds():
    rng = np.random.default_rng(18)
    return rng.normal(size=(160, 6)), rng.normal(size=(120, 6)) @ _spd(6, 19) + 0.3


@pytest.mark.parametrize("name", [n for n in DISTANCES if n not in ("mmd", "proxy_a_distance")])
def test_identity_is_zero(name):
    X = np.random.default_rng(20).normal(size=(150, 6))
    assert abs(estimators.score(name, X, X)) < 1e-8


def test_mmd_identity():
    X = np.random.default_rng(20).normal(size=(150, 6))
    assert abs(dv.mmd(X, X, unbiased=False)) < 1e-12  # V-statistic: exactly 0
    n = len(X)  # U-statistic on identical samples: 2 (S - n)/(n(n-1)) - 2 S/n^2, S = sum of K
    assert abs(dv.mmd(X, X)) < 2 / (n - 1)


@pytest.mark.parametrize("name", DISTANCES)
def test_same_distribution_is_near_zero(name):
    rng = np.random.default_rng(25)
    X, Y = rng.normal(size=(400, 4)), rng.normal(size=(300, 4))
    far = estimators.score(name, X, Y + 1.5)
    assert abs(estimators.score(name, X, Y)) < 0.2 * far


@pytest.mark.parametrize("name", ["mmd", "frechet", "gaussian_js", "sliced_wasserstein", "semb"])
def test_symmetric(name, clouds):
    X, Y = clouds
    assert estimators.score(name, X, Y) == pytest.approx(estimators.score(name, Y, X), rel=1e-9, abs=1e-12)


def test_kl_is_asymmetric(clouds):
    X, Y = clouds
    assert dv.gaussian_kl(X, Y) != pytest.approx(dv.gaussian_kl(Y, X), rel=1e-3)


@pytest.mark.parametrize("name", DISTANCES)
def test_monotonic_in_mean_shift(name):
    rng = np.random.default_rng(21)
    X, Y = rng.normal(size=(200, 5)), rng.normal(size=(150, 5))
    direction = np.array([1.0, -1.0, 0.5, 0.0, 2.0]) / 2.5
    vals = [estimators.score(name, X, Y + s * direction) for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
    if name == "proxy_a_distance":  # a classifier error is noisy near chance: strict only past it
        assert vals[0] < vals[2] < vals[3] <= vals[4]
    else:
        assert all(a < b for a, b in zip(vals, vals[1:])), vals


def test_semb_decreases_with_angle():
    rng = np.random.default_rng(22)
    X = rng.normal(size=(100, 3)) * 0.1 + np.array([1.0, 0, 0])
    vals = []
    for ang in (0.0, 0.5, 1.0, 2.0, 3.0):
        R = np.array([[math.cos(ang), -math.sin(ang), 0], [math.sin(ang), math.cos(ang), 0], [0, 0, 1]])
        vals.append(estimators.score("semb", X, X @ R.T))
    assert all(a > b for a, b in zip(vals, vals[1:])), vals


def test_registry_covers_all_functions():
    assert sorted(DOMAIN_NAMES) == sorted(
        ["mmd", "frechet", "gaussian_kl", "gaussian_js", "sliced_wasserstein", "proxy_a_distance", "semb"]
    )
    assert estimators.info("semb").higher_is_better and not estimators.info("mmd").higher_is_better


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("name", DOMAIN_NAMES)
def test_bad_inputs_raise(name):
    rng = np.random.default_rng(23)
    X = rng.normal(size=(20, 4))
    with pytest.raises(ValueError, match="dimensions"):
        estimators.score(name, X, rng.normal(size=(20, 5)))
    Xn = X.copy()
    Xn[3, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        estimators.score(name, Xn, X)
    with pytest.raises(ValueError, match="at least 2"):
        estimators.score(name, X, X[:1])
    with pytest.raises(ValueError, match="2-D"):
        estimators.score(name, X[:, 0], X)


def test_bad_parameters_raise():
    rng = np.random.default_rng(24)
    X, Y = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    bad = [
        (dv.mmd, {"kernel": "poly"}), (dv.mmd, {"bandwidth": -1.0}), (dv.mmd, {"bandwidth": "mean"}),
        (dv.mmd, {"max_samples": 1}), (dv.sliced_wasserstein, {"n_projections": 0}),
        (dv.sliced_wasserstein, {"p": 0.5}), (dv.gaussian_kl, {"ridge": -1.0}),
        (dv.frechet_distance, {"ridge": float("nan")}), (dv.proxy_a_distance, {"cv": 1}),
        (dv.proxy_a_distance, {"classifier": "svm"}), (dv.proxy_a_distance, {"alpha": 0.0}),
    ]
    for fn, kw in bad:
        with pytest.raises(ValueError):
            fn(X, Y, **kw)
    with pytest.raises(ValueError, match="cv="):
        dv.proxy_a_distance(X, Y[:3])
    const = np.ones((10, 3))
    with pytest.raises(ValueError, match="bandwidth"):
        dv.mmd(const, const)
    with pytest.raises(ValueError, match="positive definite"):
        dv.gaussian_kl(const, const, ridge=0.0)


# ------------------------------------------------------------------ invariances (hypothesis)
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ROW_PERM_INVARIANT = ["mmd", "frechet", "gaussian_kl", "gaussian_js", "sliced_wasserstein", "semb"]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(8, 40), m=st.integers(8, 40), d=st.integers(1, 5),
       shift=st.floats(-3, 3))
def test_row_permutation_and_rigid_motion_invariance(seed, n, m, d, shift):
    rng = np.random.default_rng(seed)
    X, Y = rng.normal(size=(n, d)), rng.normal(size=(m, d)) * 1.5 + shift
    px, py = rng.permutation(n), rng.permutation(m)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # random orthogonal map
    c = rng.normal(size=d) * 5
    for name in _ROW_PERM_INVARIANT:
        base = estimators.score(name, X, Y)
        assert estimators.score(name, X[px], Y[py]) == pytest.approx(base, rel=1e-7, abs=1e-9), name
        if name in ("mmd", "frechet", "gaussian_kl", "gaussian_js"):  # depend only on distances / moments
            moved = estimators.score(name, X @ Q.T + c, Y @ Q.T + c)
            assert moved == pytest.approx(base, rel=1e-6, abs=1e-8), name
    for name in DISTANCES:
        assert estimators.score(name, X, Y) > -2.0 - 1e-12
    assert dv.frechet_distance(X, Y) >= 0 and dv.gaussian_kl(X, Y) >= 0 and dv.gaussian_js(X, Y) >= 0
