"""N-LEEP's cost bounds: rows for the fit, PCA dimensions and components are capped."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

import estimators
from estimators.leep import leep_from_probs
from estimators.nleep import nleep


def _data(n=600, d=20, C=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    X = rng.normal(size=(C, d))[y] * 0.4 + rng.normal(size=(n, d))  # overlapping classes: NLEEP well below 0
    return X, y


def test_caps_that_do_not_bind_leave_the_value_unchanged():
    X, y = _data()
    ref = nleep(X, y, max_fit_rows=None, max_dims=None, max_components=None)
    assert nleep(X, y) == ref
    assert nleep(X, y, max_fit_rows=600, max_dims=20, max_components=15) == ref


def test_row_subsample_fits_on_the_subsample_and_scores_every_row():
    X, y = _data(n=900)
    got = nleep(X, y, max_fit_rows=400)
    rows = np.sort(np.random.default_rng(123).choice(900, size=400, replace=False))
    pca = PCA(n_components=0.8, svd_solver="full").fit(X[rows])
    Z = pca.transform(X).astype(np.float32)
    gmm = GaussianMixture(n_components=15, random_state=123).fit(Z[rows])
    expected = leep_from_probs(gmm.predict_proba(Z).astype(np.float64), y, 3)
    assert got == pytest.approx(expected, rel=1e-6)


def test_dimension_and_component_caps():
    # rel 1e-6: the features are cast to float32 after PCA, as in the reference (~1e-7 relative)
    X, y = _data(d=40)
    Zfull = PCA(n_components=0.8, svd_solver="full").fit_transform(X)
    assert Zfull.shape[1] > 5
    got = nleep(X, y, max_dims=5, max_components=4)  # 4 components, but never fewer than C = 3
    Z = Zfull[:, :5].astype(np.float32)
    post = GaussianMixture(n_components=4, random_state=123).fit(Z).predict_proba(Z)
    assert got == pytest.approx(leep_from_probs(post.astype(np.float64), y, 3), rel=1e-6)
    floor = nleep(X, y, max_components=1, max_dims=5)
    post = GaussianMixture(n_components=3, random_state=123).fit(Z).predict_proba(Z)
    assert floor == pytest.approx(leep_from_probs(post.astype(np.float64), y, 3), rel=1e-6)


@pytest.mark.parametrize("key", ["max_fit_rows", "max_dims", "max_components"])
def test_invalid_caps_raise(key):
    X, y = _data(n=60)
    with pytest.raises(ValueError, match=key):
        estimators.score("nleep", X, y, **{key: 0})


def test_too_few_fit_rows_for_the_components_is_a_value_error():
    X, y = _data(n=200)
    with pytest.raises(ValueError, match="components"):
        nleep(X, y, max_fit_rows=10)


def test_under_the_caps_the_value_is_the_reference_pipeline():
    """Below every cap N-LEEP is the authors' pipeline (google-research stable_transfer): sklearn
    PCA(0.8, svd_solver="full") on all rows, float32, GaussianMixture(5 C, random_state=123) with
    sklearn's defaults, LEEP of its posteriors (rel 1e-6: the float32 EM's sums depend on the
    BLAS thread count, N-LEEP fits with one thread)."""
    X, y = _data(n=700, d=24, C=4, seed=3)
    Z = PCA(n_components=0.8, svd_solver="full").fit_transform(X).astype(np.float32)
    post = GaussianMixture(n_components=20, random_state=123).fit(Z).predict_proba(Z)
    assert nleep(X, y) == pytest.approx(leep_from_probs(post.astype(np.float64), y, 4), rel=1e-6)
