"""The text benchmark re-scores from the committed inputs (bench/data/text) to the committed results,
and the acceptance criterion of the default ranker holds there."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import text_tasks

COMMITTED = Path(text_tasks.RESULTS_DIR) / "text_tasks.json"


@pytest.fixture(scope="module")
def rescored(tmp_path_factory):
    return text_tasks.rescore(out_dir=tmp_path_factory.mktemp("text"))


def test_rescore_reproduces_the_committed_results(rescored):
    committed = json.loads(COMMITTED.read_text())
    assert set(rescored["summary"]) == set(committed["summary"])
    for method, row in committed["summary"].items():
        for metric, value in row.items():
            got = rescored["summary"][method][metric]
            if isinstance(value, float) and math.isfinite(value):
                assert got == pytest.approx(value, abs=1e-6), (method, metric)
    assert rescored["info"]["targets"] == list(json.loads((text_tasks.DATA_DIR / "meta.json").read_text())["targets"])


def test_default_beats_every_single_method(rescored):
    """Mean weighted tau higher and mean regret@1 lower than every single estimator / divergence /
    prior and the static baseline (the combinations of the ablation are not single methods)."""
    summary = rescored["summary"]
    default = summary["default"]
    for method, row in summary.items():
        if method == "default":
            continue
        if math.isfinite(row["weighted_tau"]):
            assert default["weighted_tau"] > row["weighted_tau"], method
        assert default["regret@1"] < row["regret@1"], method
    assert rescored["ablation"]["default set"]["weighted_tau"] == pytest.approx(default["weighted_tau"])
