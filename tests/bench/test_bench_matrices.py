"""The observed-transfer matrix benchmark runs on a slice of ../shared and never leaks the held-out target."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[2]))  # bench/ is not an installed package
from bench import common, matrices  # noqa: E402

SHARED = Path(__file__).parents[2].parent / "shared" / "benchmarks"
pytestmark = pytest.mark.skipif(not (SHARED / "taskweb").is_dir(), reason="../shared/benchmarks not present")

TW_TARGETS = ["boolq", "cb", "copa", "rte", "snli", "stsb"]


@pytest.fixture(scope="module")
def taskweb():
    return matrices.load_taskweb(SHARED, targets=TW_TARGETS)


@pytest.fixture(scope="module")
def recycling():
    return matrices.load_recycling("microsoft_deberta-v3-base", SHARED,
                                   targets=["rte", "mnli", "sst2", "cola", "boolq"], max_sources=30)


def test_taskweb_gold_is_taskwebs_score(taskweb):
    # 0.5*PC + 0.5*(0.2*PM - 0.1) from the (finetune, t5l) row, recomputed from the CSV here
    import csv

    with (SHARED / "taskweb" / "taskweb_pairwise_scores.csv").open() as fh:
        row = next(r for r in csv.DictReader(fh)
                   if (r["target"], r["source"], r["model"], r["adaptation"]) == ("rte", "snli", "t5l", "finetune"))
    want = 0.5 * float(row["pc_mean_relative_change"]) + 0.5 * (0.2 * float(row["pm_fraction_positive"]) - 0.1)
    assert taskweb.gold["rte"]["snli"] == pytest.approx(want)
    assert len(taskweb.gold["rte"]) == 21 and "rte" not in taskweb.gold["rte"]
    # regrets use absolute t5l scores (fractions)
    assert 0 < taskweb.absolute["rte"]["snli"] <= 1
    # the context profiles never include the evaluated (t5l, finetune) setting
    assert not any(k.startswith("t5l/finetune/") for k in taskweb.context["rte"])


def test_recycling_gains_and_no_avg(recycling):
    g = recycling.gold["rte"]
    base = "microsoft/deberta-v3-base#0"  # row 0; the same hub id was also tested again (row 24)
    assert g[base] == 0.0  # gain of the vanilla base over itself
    a = recycling.absolute["rte"]
    assert all(math.isclose(g[s], a[s] - a[base]) for s in g)
    # context: other base architectures only
    assert recycling.context["rte"] and not any(k.startswith("microsoft_deberta") for k in recycling.context["rte"])


@pytest.mark.parametrize("fixture", ["taskweb", "recycling"])
def test_predictions_do_not_read_the_held_out_column(fixture, request):
    mat = request.getfixturevalue(fixture)
    t = sorted(mat.gold)[0]
    before = {(m, k): matrices.predict(mat, t, m, k) for m, k in
              [("static_mean", 0), ("prior_sim", 0), ("probes", 3), ("static_mean+probes", 3)]}
    static = before[("static_mean", 0)]
    probes = sorted(static, key=lambda s: (-static[s], s))[:3]
    # scramble every hidden value of the held-out target (probe values stay revealed)
    rng = np.random.default_rng(0)
    saved = dict(mat.gold[t])
    try:
        for s in mat.gold[t]:
            if s not in probes:
                mat.gold[t][s] = float(rng.normal(0, 10))
        for (m, k), p in before.items():
            assert matrices.predict(mat, t, m, k) == p, f"{m} changed when hidden values of {t} changed"
        # and the held-out target is not among the targets the prior averages over
        assert t not in mat.others(t)
        sim = matrices.context_similarity(mat, t)
        assert t not in sim and set(sim) == set(mat.gold) - {t}
    finally:
        mat.gold[t].update(saved)
    # probes are placed at their revealed value
    p3 = before[("probes", 3)]
    assert all(p3[s] == mat.gold[t][s] for s in probes)


def test_similarity_weighting_changes_the_prior(taskweb):
    t = "rte"
    sim = matrices.context_similarity(taskweb, t)
    assert all(v >= 0 for v in sim.values()) and max(sim.values()) > 0
    a = matrices.predict(taskweb, t, "static_mean")
    b = matrices.predict(taskweb, t, "prior_sim")
    assert a.keys() == b.keys() and a != b


def test_benchmark_report_on_a_slice(taskweb, tmp_path):
    preds = matrices.predictions(taskweb)
    res = common.evaluate_rankings("slice", preds, taskweb.gold, regret_gold=taskweb.absolute,
                                   title="slice", command="pytest", out_dir=tmp_path)
    s = res["summary"]
    assert {"static_mean", "prior_sim", "probes_k1", "probes_k5"} <= set(s)
    for m in s.values():
        assert -1 <= m["weighted_tau"] <= 1 and 0 <= m["regret@1"] <= 1
    assert (tmp_path / "slice.md").read_text().startswith("# slice")
    assert (tmp_path / "slice_weighted_tau.png").stat().st_size > 1000
    # the oracle (gold itself) is perfect, a reversed ranking is not
    t = TW_TARGETS[0]
    assert common.metrics(taskweb.gold[t], taskweb.gold[t], taskweb.absolute[t])["weighted_tau"] == pytest.approx(1.0)
    rev = {s: -v for s, v in taskweb.gold[t].items()}
    assert common.metrics(rev, taskweb.gold[t], taskweb.absolute[t])["kendall_tau"] == pytest.approx(-1.0)
