"""The regression benchmark is re-made from the committed score tables (no fitting: exact up to
float formatting), and its LogME row is LogME with ``regression=True`` on the real-valued target."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bench import common, image_zoo2, regression, scoretables
from estimators import score


def test_regression_report_is_reproduced(tmp_path):
    res = regression.run(out_dir=tmp_path)
    committed = json.loads((common.RESULTS_DIR / "regression.json").read_text())
    assert set(res["summary"]) == set(committed["summary"])
    for method, row in committed["summary"].items():
        for metric in ("weighted_tau", "kendall_tau", "regret@1"):
            if row.get(metric) is not None:
                assert res["summary"][method][metric] == pytest.approx(row[metric], abs=1e-6), (method, metric)


def test_logme_row_is_logme_regression():
    doc = scoretables.load("image_zoo2_regression")
    cands, labels, _, _ = image_zoo2.load_inputs()
    t = next(iter(doc["targets"]))
    y = labels[t]
    ys = (y - y.mean()) / y.std()
    for s, v in doc["targets"][t]["scores"]["logme"].items():
        assert v == pytest.approx(score("logme", cands[t][s]["features"], ys, regression=True), rel=1e-6)
    binned = image_zoo2.bin_quantiles(y)
    assert np.bincount(binned).min() >= len(y) // image_zoo2.REG_BINS - 1  # quantile bins: balanced
    assert doc["targets"][t]["scores"]["logme"] != doc["targets"][t]["scores"]["logme_binned"]
