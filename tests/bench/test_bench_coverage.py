"""bench.coverage on one committed target (runs only where estimators.uncertainty exists)."""
from __future__ import annotations

import pytest

pytest.importorskip("estimators.uncertainty")

from bench import coverage, image_zoo2  # noqa: E402


def test_tied_with_top_set_on_a_committed_target():
    cands, labels, gold, meta = image_zoo2.load_inputs()
    t = next(t for t, m in meta["targets"].items() if m["task"] == "classification")
    res = coverage.benchmark_coverage({t: cands[t]}, labels, gold, B=20)
    row = res["per_target"][t]
    assert 1 <= row["size"] <= row["n_candidates"]
    assert row["predicted_top"] in row["tied"]
    assert res["coverage"] in (0.0, 1.0)
