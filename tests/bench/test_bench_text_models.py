"""The text-models benchmark re-scores from its committed inputs (bench/data/text_models) to the
committed score tables and results. Tolerances as in test_bench_image_zoo2 (raw values to 1e-6
for the well-conditioned estimators, the order within 0.05 weighted tau for the others)."""
from __future__ import annotations

import numpy as np
import pytest
from rescore_checks import assert_score_table_reproduced, assert_summary_reproduced

from bench import common, text_models

STABLE = {"logme", "logme_binned", "gbc", "etran_lda", "etran_energy", "hscore_shrinkage", "transrate"}
RESULTS = common.RESULTS_DIR / "text_models.json"


@pytest.fixture(scope="module")
def rescored(tmp_path_factory):
    out = tmp_path_factory.mktemp("text_models")
    res = text_models.rescore(out_dir=out, scores_dir=out / "scores")
    return res, out / "scores"


@pytest.mark.parametrize("table", ["text_models", "text_models_regression"])
def test_score_tables_are_reproduced(rescored, table):
    _, scores = rescored
    assert_score_table_reproduced(table, scores, STABLE)


def test_results_are_reproduced(rescored):
    res, _ = rescored
    assert_summary_reproduced(res, RESULTS, ("default",), STABLE)


def test_protocol_of_the_committed_inputs():
    cands, labels, gold_runs, meta = text_models.load_inputs()
    assert set(meta["sources"]) == set(text_models.ENCODERS)
    assert {m["task"] for m in meta["targets"].values()} == {"classification", "regression"}
    for t, runs in gold_runs.items():
        assert set(runs) == set(meta["sources"]), t
        assert all(len(v) == 3 and np.all(np.isfinite(v)) for v in runs.values()), t
        assert all(c["features"].shape[0] == text_models.N_TRAIN for c in cands[t].values())
    for f in text_models.DATA_DIR.iterdir():
        assert f.stat().st_size < 10 * 2**20, f
