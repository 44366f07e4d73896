"""Ill-conditioned covariances: the H-score's value does not depend on the BLAS kernel.

The plain H-score inverts the feature covariance. Eigenvalues far below the largest are computed
with an absolute error of order d * eps * lambda_max, which differs between BLAS kernels
(OpenBLAS picks Haswell, SkylakeX, ... at run time); with tllib's cut-off 1e-15 those directions
entered the pseudo-inverse and moved the score by up to 1e-4 relative. ``trace_pinv_product``
leaves them out (relative cut-off 1e-7 with a continuous ramp), so the value is stable to ~1e-9.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import estimators
from estimators.hscore import RCOND, trace_pinv_product

PROBE = """
import json, sys
import numpy as np
import estimators
rng = np.random.default_rng(0)
y = np.arange(300) % 4
out = []
for decay in (10.0, 14.0, 18.0):
    d = 96
    scales = 10.0 ** (-decay * np.arange(d) / (2 * (d - 1)))
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    X = (rng.normal(size=(300, d)) * scales) @ Q.T + 0.3 * np.eye(4)[y] @ rng.normal(size=(4, d)) * scales[-1]
    out.append([estimators.score("hscore", X, y), estimators.score("hscore_shrinkage", X, y)])
print(json.dumps(out))
"""


def _ill_conditioned(decay: float, seed: int = 0, n: int = 300, d: int = 96):
    """Features whose covariance eigenvalues fall log-linearly to 10^-decay of the largest."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    scales = 10.0 ** (-decay * np.arange(d) / (2 * (d - 1)))
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    X = (rng.normal(size=(n, d)) * scales) @ Q.T + 0.3 * np.eye(4)[y] @ rng.normal(size=(4, d)) * scales[-1]
    return X, y


@pytest.mark.parametrize("decay", [10.0, 14.0, 18.0])
def test_rounding_level_perturbations_move_the_hscore_by_less_than_1e_9(decay):
    """Perturbing every feature by a few ulps (what another kernel's rounding does to the
    covariance) changes the score by < 1e-9 relative."""
    X, y = _ill_conditioned(decay)
    base = estimators.score("hscore", X, y)
    rng = np.random.default_rng(1)
    for _ in range(3):
        Xp = X * (1.0 + 4 * np.finfo(np.float64).eps * rng.standard_normal(X.shape))
        assert estimators.score("hscore", Xp, y) == pytest.approx(base, rel=1e-9, abs=0.0)
        assert estimators.score("hscore_shrinkage", Xp, y) == pytest.approx(
            estimators.score("hscore_shrinkage", X, y), rel=1e-9, abs=0.0)


def test_same_value_under_every_openblas_kernel_available():
    """The same scores in subprocesses that force other OpenBLAS kernels (OPENBLAS_CORETYPE; a
    kernel the CPU cannot run falls back to one it can, which only makes the check weaker)."""
    runs = []
    for core in ("", "Haswell", "Sandybridge", "Nehalem"):
        env = dict(os.environ, OPENBLAS_CORETYPE=core, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        runs.append(np.array(json.loads(proc.stdout)))
    for other in runs[1:]:
        np.testing.assert_allclose(other, runs[0], rtol=1e-9, atol=0.0)


def test_cut_off_leaves_well_conditioned_and_singular_cases_as_the_plain_pseudo_inverse():
    rng = np.random.default_rng(3)
    for n, d in [(200, 20), (60, 200)]:  # well conditioned; singular (n < d)
        X = rng.normal(size=(n, d))
        y = np.arange(n) % 3
        Xc = X - X.mean(0)
        means = np.stack([Xc[y == c].mean(0) for c in range(3)])
        counts = np.bincount(y)
        Sb = (means * counts[:, None]).T @ means
        expected = float(np.trace(np.linalg.pinv(Xc.T @ Xc, rcond=1e-15, hermitian=True) @ Sb))
        assert estimators.score("hscore", X, y) == pytest.approx(expected, rel=1e-9)
    # n <= d: the score saturates at C - 1
    assert estimators.score("hscore", rng.normal(size=(60, 200)), np.arange(60) % 3) == pytest.approx(2.0, rel=1e-12)


def test_trace_pinv_product_ramp_is_continuous():
    """An eigenvalue crossing the cut-off changes the value continuously (no jump)."""
    V = np.eye(2)
    B = np.array([[1.0, 1e-4]])
    vals = []
    for lam2 in np.geomspace(0.5 * RCOND, 4 * RCOND, 200):
        vals.append(trace_pinv_product(V @ np.diag([1.0, lam2]) @ V.T, B))
    jumps = np.abs(np.diff(vals))
    assert vals[0] == pytest.approx(1.0) and vals[-1] == pytest.approx(1.0 + 1e-8 / (4 * RCOND))
    # a hard cut-off would jump by 1e-8 / RCOND = 0.1 where the eigenvalue crosses it
    assert jumps.max() < 0.002
