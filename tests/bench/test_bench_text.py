"""The text benchmark re-scores from the committed inputs (bench/data/text) to the committed results,
and the acceptance criterion of the default ranker holds there."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench import text_tasks

COMMITTED = Path(text_tasks.RESULTS_DIR) / "text_tasks.json"


@pytest.fixture(scope="module")
def rescored(tmp_path_factory):
    return text_tasks.rescore(out_dir=tmp_path_factory.mktemp("text"))


#: How far each method's value may move between machines (relative to the largest |value| of a
#: target), i.e. between BLAS kernels (OpenBLAS picks Haswell, SkylakeX, ... at run time).
#: Measured on the committed data with OPENBLAS_CORETYPE=Haswell / Sandybridge / Prescott: at most
#: 1.3e-10 (gaussian_kl), 3e-13 (esm_gbc), <= 1e-13 for every other method; the bounds below add
#: margin and follow each method's numerics:
STABILITY = {
    # closed forms in float64 (sums, one eigh / SVD of a well-conditioned matrix): ~1e-13
    "default": 1e-11, "esm_logme": 1e-11, "logme_finetuned": 1e-11, "esm_etran_lda": 1e-11,
    "esm_hscore_shrinkage": 1e-11, "esm_transrate": 1e-11, "esm_sfda": 1e-11, "esm_ped": 1e-11,
    "esm_gbc": 1e-11, "semb": 1e-11, "mmd": 1e-11, "frechet": 1e-11, "sliced_wasserstein": 1e-11,
    "static": 1e-11, "prior_mean": 1e-11, "prior_sim": 1e-11, "esm_tmi": 1e-11,
    # plain H-score: the pseudo-inverse's eigenvalue cut-off bounds a kernel's effect by ~1e-9
    # (estimators.hscore.trace_pinv_product); on this data (n = 160 <= d = 384) it is C - 1 for
    # every source, a noise tie (bench.common.tie_noise)
    "esm_hscore": 1e-9,
    # log-determinants / inverses of d x d covariances, EM of a seeded mixture, a cross-validated
    # ridge classifier: errors amplified by the conditioning or by iterations
    "gaussian_kl": 1e-9, "gaussian_js": 1e-9, "esm_nleep": 1e-9, "proxy_a_distance": 1e-9,
}
#: Ranking metrics are step functions of each target's order of sources: when every gap between
#: two sources' values exceeds MARGIN x the method's stability bound, no machine can swap them, so
#: the metrics reproduce exactly; the committed JSON rounds them to 6 significant digits (abs 1e-6).
MARGIN = 100.0
SUMMARY_ABS = 1e-6


def test_rescore_reproduces_the_committed_results(rescored):
    committed = json.loads(COMMITTED.read_text())
    assert set(rescored["summary"]) == set(committed["summary"])
    for method, row in committed["summary"].items():
        for metric, value in row.items():
            got = rescored["summary"][method][metric]
            if isinstance(value, float) and math.isfinite(value):
                assert got == pytest.approx(value, abs=SUMMARY_ABS), (method, metric)
            elif isinstance(value, float) or value is None:  # undefined (a tie): undefined here too
                assert got is None or not math.isfinite(got), (method, metric)
    assert rescored["info"]["targets"] == list(json.loads((text_tasks.DATA_DIR / "meta.json").read_text())["targets"])


def test_every_order_is_stable_beyond_the_kernel_noise(rescored):
    """The reason the comparison above holds on any x86-64 machine: per target, each method's
    values are either one tie (a spread within floating-point noise) or separated by gaps far above
    the method's stability bound."""
    preds = rescored["predictions"]
    assert set(STABILITY) >= {m for t in preds.values() for m in t}
    for t, methods in preds.items():
        for method, p in methods.items():
            v = np.array([x for x in p.values() if math.isfinite(x)], dtype=np.float64)
            if v.size < 2:
                continue
            distinct = np.unique(v)
            if distinct.size == 1:
                continue  # a tie: every metric treats it the same on every machine
            gap = float(np.min(np.diff(distinct))) / float(np.abs(v).max())
            assert gap > MARGIN * STABILITY[method], (t, method, gap)


def test_what_the_readme_claims_about_the_default(rescored):
    """On the committed data: the default has the lowest mean regret@1 of all methods, beats the
    static baseline, ESM-LogME alone and both earlier designs on weighted tau, and its row equals
    the ablation's 'default set' (the service's formula). It does *not* beat every single method
    on weighted tau (ESM-GBC is level with it): the README says so, and so does this test."""
    summary, ablation = rescored["summary"], rescored["ablation"]
    default = summary["default"]
    for method, row in summary.items():
        if method != "default":
            assert default["regret@1"] < row["regret@1"], method
    for other in ("static", "esm_logme"):
        assert default["weighted_tau"] > summary[other]["weighted_tau"] + 0.1, other
    for earlier in ("earlier: esm_logme+esm_nleep", "earlier: esm_logme+semb"):
        assert default["weighted_tau"] > ablation[earlier]["weighted_tau"], earlier
    assert abs(default["weighted_tau"] - summary["esm_gbc"]["weighted_tau"]) < 0.01
    assert ablation["default set"]["weighted_tau"] == pytest.approx(default["weighted_tau"])
    gbc = rescored["paired"]["esm_gbc"]["weighted_tau"]
    assert gbc["ci"][0] < 0 < gbc["ci"][1]  # level: the difference is within the spread over targets
