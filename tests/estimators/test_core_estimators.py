"""Unit tests for the core estimators: LogME, H-score (+ shrinkage), LEEP, NCE, N-LEEP,
TransRate and GBC. Reference agreement is in test_conformance.py; generic relabelling / row
permutation properties in test_properties.py. Here: validation, closed-form cases, and the
numerical choices (LogME's rank correction and vectorised fixed point, Ledoit-Wolf, Sylvester
log-determinants)."""
from __future__ import annotations

import numpy as np
import pytest

import estimators
from estimators.hscore_shrinkage import ledoit_wolf
from estimators.transrate import coding_rate

FEATURE_ESTIMATORS = ["logme", "hscore", "hscore_shrinkage", "nleep", "transrate", "gbc"]
PROB_ESTIMATORS = ["leep", "nce"]
ALL = FEATURE_ESTIMATORS + PROB_ESTIMATORS


def blobs(n=90, d=5, C=3, seed=0, sep=2.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    X = rng.normal(size=(n, d)) + sep * rng.normal(size=(C, d))[y]
    return X, y


def probs(n=90, Z=6, C=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    logits = rng.normal(size=(n, Z)) + 2.0 * np.eye(Z)[y % Z]
    P = np.exp(logits)
    return P / P.sum(axis=1, keepdims=True), y


def inputs(name, **kw):
    return probs(**kw) if name in PROB_ESTIMATORS else blobs(**kw)


# --- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_nan_and_inf_rejected(name):
    X, y = inputs(name)
    for bad in (np.nan, np.inf):
        Xb = X.copy()
        Xb[3, 1] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            estimators.score(name, Xb, y)


@pytest.mark.parametrize("name", ALL)
def test_shape_mismatch_rejected(name):
    X, y = inputs(name)
    with pytest.raises(ValueError, match="samples but y has"):
        estimators.score(name, X, y[:-1])
    with pytest.raises(ValueError, match="2-D"):
        estimators.score(name, X[:, 0], y)
    with pytest.raises(ValueError, match="1-D"):
        estimators.score(name, X, np.stack([y, y], axis=1))


@pytest.mark.parametrize("name", ALL)
def test_single_class_rejected(name):
    X, y = inputs(name)
    with pytest.raises(ValueError, match="at least 2 are needed"):
        estimators.score(name, X, np.zeros_like(y))


@pytest.mark.parametrize("name", ALL)
def test_float_non_integer_labels_rejected(name):
    X, y = inputs(name)
    with pytest.raises(ValueError, match="regression=True"):
        estimators.score(name, X, y + 0.5)


@pytest.mark.parametrize("name", PROB_ESTIMATORS)
def test_probabilities_must_sum_to_one(name):
    P, y = probs()
    with pytest.raises(ValueError, match="sum to 1"):
        estimators.score(name, P * 1.5, y)
    with pytest.raises(ValueError, match="logits"):
        estimators.score(name, np.log(P), y)  # logits are negative


def test_fewer_samples_than_mixture_components():
    X, y = blobs(n=12, C=3)  # N-LEEP needs 5 C = 15 mixture components
    with pytest.raises(ValueError, match="15 components"):
        estimators.score("nleep", X, y)
    assert np.isfinite(estimators.score("nleep", X, y, n_components=3))


def test_nleep_failed_mixture_is_a_value_error():
    # 3 far-apart clusters of 20 points, 15 components in 2 float32 PCA dimensions: some
    # components collapse onto single points (as on the conformance case ``wide``)
    rng = np.random.default_rng(1)
    y = np.arange(60) % 3
    X = (rng.normal(size=(60, 200)) + 3 * rng.normal(size=(3, 200))[y]) * 100
    with pytest.raises(ValueError, match="could not be fitted"):
        estimators.score("nleep", X, y)


def test_bad_parameters_rejected():
    X, y = blobs()
    with pytest.raises(ValueError, match="gaussian"):
        estimators.score("gbc", X, y, gaussian="full")
    with pytest.raises(ValueError, match="eps"):
        estimators.score("transrate", X, y, eps=0.0)
    with pytest.raises(ValueError, match="variance"):
        estimators.score("nleep", X, y, variance=1.5)
    with pytest.raises(ValueError, match="rows"):
        estimators.score("logme", X, np.ones((len(X) - 1, 2)), regression=True)
    with pytest.raises(ValueError, match="NaN"):
        estimators.score("logme", X, np.full(len(X), np.nan), regression=True)


# --- label handling -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_label_values_do_not_matter(name):
    X, y = inputs(name)
    base = estimators.score(name, X, y)
    gaps = np.array([7, -3, 100])[y]  # non-contiguous, unsorted integers
    strings = np.array(["cat", "ant", "bee"])[y]
    for relabelled in (gaps, strings, y.reshape(-1, 1)):
        np.testing.assert_allclose(estimators.score(name, X, relabelled), base, rtol=1e-10, atol=1e-12)


def test_logme_label_shapes_and_regression_forms():
    X, y = blobs()
    np.testing.assert_allclose(estimators.score("logme", X, y), estimators.score("logme", X, y[:, None]), rtol=1e-12)
    t = X @ np.arange(1.0, 6.0) + np.random.default_rng(1).normal(size=len(X))
    r1 = estimators.score("logme", X, t, regression=True)
    np.testing.assert_allclose(estimators.score("logme", X, t[:, None], regression=True), r1, rtol=1e-12)
    np.testing.assert_allclose(estimators.score("logme", X, t * 1, regression=True), r1, rtol=1e-12)
    # multi-target regression = mean of the single-target evidences
    t2 = np.stack([t, -2 * t + 1], axis=1)
    r2 = estimators.score("logme", X, t2[:, 1], regression=True)
    np.testing.assert_allclose(estimators.score("logme", X, t2, regression=True), (r1 + r2) / 2, rtol=1e-12)
    # classification = regression on the one-hot indicator matrix
    np.testing.assert_allclose(
        estimators.score("logme", X, np.eye(3)[y], regression=True), estimators.score("logme", X, y), rtol=1e-12
    )


# --- LogME numerics ---------------------------------------------------------------------------
def _loop_logme(X, Y):
    """Oracle: thin SVD with U formed, one fixed point per column, full-spectrum evidence."""
    n, d = X.shape
    U, s, _ = np.linalg.svd(X, full_matrices=False)
    keep = s > s[0] * 1e-10
    U, sigma = U[:, keep], s[keep] ** 2
    out = []
    for y in Y.T:
        x2 = (U.T @ y) ** 2
        res_x2 = y @ y - x2.sum()
        alpha = beta = 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = np.sum(sigma / (sigma + t))
            m2 = np.sum(sigma * x2 / (t + sigma) ** 2)
            res2 = np.sum(x2 / (1 + sigma / t) ** 2) + res_x2
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        # log det(alpha I_d + beta X^T X) over all d eigenvalues, zero ones included
        logdet = np.sum(np.log(alpha + beta * sigma)) + (d - sigma.size) * np.log(alpha)
        ev = d / 2 * np.log(alpha) + n / 2 * np.log(beta) - logdet / 2 - beta / 2 * res2 - alpha / 2 * m2
        out.append((ev - n / 2 * np.log(2 * np.pi)) / n)
    return float(np.mean(out))


@pytest.mark.parametrize("n,d", [(200, 10), (40, 60), (60, 60)])
def test_logme_equals_per_column_loop(n, d):
    # unequal classes and scales, so columns converge at different iterations
    rng = np.random.default_rng(n + d)
    y = rng.choice(4, size=n, p=[0.55, 0.3, 0.1, 0.05])
    y[:4] = np.arange(4)
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0, size=d) + rng.normal(size=(4, d))[y]
    np.testing.assert_allclose(estimators.score("logme", X, y), _loop_logme(X, np.eye(4)[y]), rtol=1e-9)
    T = np.stack([X[:, 0] * 3 + rng.normal(size=n), rng.normal(size=n) * 10], axis=1)
    np.testing.assert_allclose(estimators.score("logme", X, T, regression=True), _loop_logme(X, T), rtol=1e-9)


def test_logme_keeps_rank_deficient_evidence_term():
    """Zero feature columns carry no information: with the -(d-k)/2 log(alpha) term of the zero
    singular values (thuml/LogME issue #23) the evidence does not change when they are added."""
    for n, d in ((100, 8), (30, 50)):  # rank-deficient through zero columns, and n < d
        X, y = blobs(n=n, d=d, seed=d)
        base = estimators.score("logme", X, y)
        padded = np.hstack([X, np.zeros((n, 7))])
        np.testing.assert_allclose(estimators.score("logme", padded, y), base, rtol=1e-9)
        dup = np.hstack([X, X[:, :3]])  # duplicated columns: rank unchanged, d grows
        assert np.isfinite(estimators.score("logme", dup, y))


def test_logme_rejects_zero_features():
    with pytest.raises(ValueError, match="rank 0"):
        estimators.score("logme", np.zeros((20, 4)), np.arange(20) % 2)


# --- H-score / shrinkage ----------------------------------------------------------------------
def test_ledoit_wolf_matches_sklearn():
    from sklearn.covariance import LedoitWolf

    for n, d in ((50, 8), (20, 40)):
        X, _ = blobs(n=n, d=d, seed=n)
        Xc = X - X.mean(axis=0)
        cov, shrinkage = ledoit_wolf(Xc)
        ref = LedoitWolf().fit(Xc)
        np.testing.assert_allclose(shrinkage, ref.shrinkage_, rtol=1e-10)
        np.testing.assert_allclose(cov, ref.covariance_, rtol=1e-10, atol=1e-12)


def test_hscore_closed_form_and_bound():
    X, y = blobs(n=120, d=6, C=4)
    Xc = X - X.mean(axis=0)
    G = np.stack([Xc[y == c].mean(axis=0) for c in range(4)])[y]
    expected = np.trace(np.linalg.solve(np.cov(X, rowvar=False), np.cov(G, rowvar=False)))
    value = estimators.score("hscore", X, y)
    np.testing.assert_allclose(value, expected, rtol=1e-10)
    assert 0 < value <= 3 + 1e-9  # at most C - 1
    # n < d: the total covariance is singular; the pseudo-inverse gives C - 1 (perfect separation)
    Xw, yw = blobs(n=20, d=40, C=4)
    np.testing.assert_allclose(estimators.score("hscore", Xw, yw), 3.0, rtol=1e-8)


def test_hscore_shrinkage_closed_form():
    X, y = blobs(n=30, d=40, C=3)  # n < d: the plain covariance is singular, the shrunk one is not
    Xc = X - X.mean(axis=0)
    S = Xc.T @ Xc / len(X)
    mu = np.trace(S) / S.shape[0]
    cov, a = ledoit_wolf(Xc)
    assert 0 < a < 1
    np.testing.assert_allclose(cov, (1 - a) * S + a * mu * np.eye(40), rtol=1e-12, atol=1e-15)
    G = np.stack([Xc[y == c].mean(axis=0) for c in range(3)])[y]
    expected = np.trace(np.linalg.solve(cov, (1 - a) * np.cov(G, rowvar=False)))
    np.testing.assert_allclose(estimators.score("hscore_shrinkage", X, y), expected, rtol=1e-9)


# --- TransRate -------------------------------------------------------------------------------
@pytest.mark.parametrize("m,d", [(30, 5), (5, 30)])
def test_coding_rate_uses_either_gram_matrix(m, d):
    Z = np.random.default_rng(m).normal(size=(m, d))
    eps = 1e-2
    expected = 0.5 * np.linalg.slogdet(np.eye(d) + Z.T @ Z / (m * eps))[1]
    np.testing.assert_allclose(coding_rate(Z, eps), expected, rtol=1e-12)


def test_transrate_closed_form():
    X, y = blobs(n=70, d=30, C=3)  # class sizes 24, 23, 23 < d < n: both Gram branches
    Z = X - X.mean(axis=0)

    def rate(A, eps):
        return 0.5 * np.linalg.slogdet(np.eye(A.shape[1]) + A.T @ A / (len(A) * eps))[1]

    for eps in (1e-4, 0.5):
        expected = rate(Z, eps) - np.mean([rate(Z[y == c], eps) for c in range(3)])
        np.testing.assert_allclose(estimators.score("transrate", X, y, eps=eps), expected, rtol=1e-10)


# --- GBC -------------------------------------------------------------------------------------
@pytest.mark.parametrize("gaussian", ["diagonal", "spherical"])
def test_gbc_closed_forms(gaussian):
    rng = np.random.default_rng(0)
    A = rng.normal(size=(50, 4))
    X = np.vstack([A, A])  # C classes with identical statistics: D_B = 0 -> GBC = -C (C - 1)
    y = np.repeat([0, 1], 50)
    np.testing.assert_allclose(estimators.score("gbc", X, y, gaussian=gaussian), -2.0, rtol=1e-12)
    # two unit-variance classes whose means differ by delta in one coordinate: D_B = delta^2 / 8
    B = rng.normal(size=(4000, 4))
    B = (B - B.mean(axis=0)) / B.std(axis=0)
    X = np.vstack([B, B + np.array([3.0, 0, 0, 0])])
    y = np.repeat([0, 1], 4000)
    np.testing.assert_allclose(estimators.score("gbc", X, y, gaussian=gaussian), -2 * np.exp(-9 / 8), rtol=1e-10)


# --- LEEP / NCE -------------------------------------------------------------------------------
def test_leep_and_nce_closed_forms():
    y = np.arange(60) % 3
    P = np.eye(3)[y]  # the source model predicts the target labels exactly
    assert estimators.score("leep", P, y) == pytest.approx(0.0, abs=1e-12)
    assert estimators.score("nce", P, y) == pytest.approx(0.0, abs=1e-12)
    U = np.full((60, 4), 0.25)  # an uninformative source model
    assert estimators.score("leep", U, y) == pytest.approx(np.log(1 / 3), rel=1e-12)
    z = np.zeros((60, 4))
    z[:, 0] = 1.0  # every argmax is source class 0
    assert estimators.score("nce", z, y) == pytest.approx(np.log(1 / 3), rel=1e-12)
    # source classes that never win the argmax / receive no mass are ignored, not NaN
    Pz = np.hstack([P, np.zeros((60, 2))])
    assert estimators.score("leep", Pz, y) == pytest.approx(0.0, abs=1e-12)
    assert estimators.score("nce", Pz, y) == pytest.approx(0.0, abs=1e-12)


def test_nleep_is_leep_of_separable_clusters():
    X, y = blobs(n=150, d=4, C=3, sep=30.0)
    assert estimators.score("nleep", X, y) == pytest.approx(0.0, abs=1e-6)
