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
