"""app.core helpers shared across layers: the LRU, the progress protocol, the statuses."""
from __future__ import annotations

import json

import pytest

from app.core.lru import LRU
from app.core.progress import accepting_message, no_progress, scaled
from app.core.status import FINISHED, JobStatus, RankingStatus, SourceStatus


def test_lru_failed_load_leaves_nothing_behind_and_retries():
    lru: LRU[str, int] = LRU(2)
    calls = []

    def bad():
        calls.append("bad")
        raise RuntimeError("weights missing")

    with pytest.raises(RuntimeError, match="weights missing"):
        lru.get("a", bad)
    assert lru.keys() == [] and lru._loading == {}
    assert lru.get("a", lambda: 1) == 1 and calls == ["bad"]
    lru.get("b", lambda: 2)
    lru.get("c", lambda: 3)
    assert lru.keys() == ["b", "c"]
    lru.drop_where(lambda k: k == "b")
    assert lru.keys() == ["c"]
    with pytest.raises(ValueError, match=">= 1"):
        LRU(0)


def test_progress_helpers():
    seen = []
    report = scaled(lambda f, m=None: seen.append((round(f, 6), m)), 0.5, 0.25)
    report(0.0)
    report(1.0, "done")
    report(2.0)  # clamped
    assert seen == [(0.5, None), (0.75, "done"), (0.75, None)]
    only_fraction = []
    accepting_message(only_fraction.append)(0.3, "ignored")
    assert only_fraction == [0.3]
    assert no_progress(0.1, "x") is None and scaled(None, 0.0, 1.0) is no_progress


def test_statuses_are_their_strings():
    assert JobStatus.DONE == "done" and json.dumps({"s": RankingStatus.FAILED}) == '{"s": "failed"}'
    assert {s.value for s in JobStatus} == {"queued", "running", "done", "failed", "cancelled"}
    assert {s.value for s in SourceStatus} == {"pending", "training", "ready", "failed"}
    assert JobStatus.CANCELLED in FINISHED and JobStatus.RUNNING not in FINISHED
