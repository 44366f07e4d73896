"""Checks shared by the benchmarks re-scored from committed inputs (image_zoo2, text_models):
the score tables and the summary a fresh ``rescore`` gives against the committed ones."""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest

from bench import scoretables


def assert_score_table_reproduced(table: str, scores: Path, stable: set[str]) -> tuple[dict, dict]:
    """Every estimator present for every cell; the ``stable`` ones equal to 1e-6 relative; every
    one within 0.05 weighted tau per target. Returns (committed, got)."""
    got, committed = scoretables.load(table, scores), scoretables.load(table)
    agree = scoretables.agreement(committed, got)
    for est, row in agree.items():
        assert row["missing"] == 0, (table, est)
        if est in stable:
            assert row["max_rel"] < 1e-6, (table, est, row)
        assert row["max_wtau"] < 0.05, (table, est, row)
    return committed, got


def assert_summary_reproduced(res: dict, results: Path, methods: Iterable[str], stable: set[str]) -> None:
    """The same methods; ``methods`` and the ``stable`` estimators equal to 1e-4 on every metric;
    every method within 0.05 weighted tau."""
    committed = json.loads(results.read_text())
    assert set(res["summary"]) == set(committed["summary"])
    for method in (*methods, *sorted(stable & set(committed["summary"]))):
        for metric in ("weighted_tau", "kendall_tau", "regret@1"):
            want = committed["summary"][method][metric]
            assert res["summary"][method][metric] == pytest.approx(want, abs=1e-4), (method, metric)
    for method, row in committed["summary"].items():
        assert abs(res["summary"][method]["weighted_tau"] - row["weighted_tau"]) < 0.05, method
