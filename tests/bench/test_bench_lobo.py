"""Leave-one-benchmark-out (bench.lobo): the committed study is reproduced from the committed score
tables, the selection is really out of benchmark, and the z-mean it searches over is the library's
combiner. The study only re-ranks committed numbers (no BLAS-sensitive fitting), so its values
must match to 1e-9; the text_tasks table rebuilt from bench/data/text matches to the tolerances
of test_bench_image_zoo2 (well-conditioned estimators 1e-6 relative, the rest by order)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench import common, lobo, scoretables

COMMITTED = common.RESULTS_DIR / "lobo.json"
STABLE = {"logme", "gbc", "etran_lda", "etran_energy", "hscore_shrinkage", "transrate"}


@pytest.fixture(scope="module")
def docs():
    return lobo.load_benchmarks()


@pytest.fixture(scope="module")
def study(docs):
    return lobo.study(docs)


def test_every_benchmark_takes_part(docs):
    assert set(docs) == set(lobo.BENCHMARKS)
    assert docs["text_tasks"]["kind"] == "tasks"
    assert all(t["task"] == "regression" for t in docs["regression"]["targets"].values())


def test_committed_study_is_reproduced(study):
    committed = json.loads(COMMITTED.read_text())
    assert committed["n_designs"] == study["n_designs"]
    for rule, r in committed["rules"].items():
        got = study["rules"][rule]
        assert got["chosen_on_all"]["design"] == r["chosen_on_all"]["design"], rule
        for b, h in r["held_out"].items():
            assert got["held_out"][b]["design"] == h["design"], (rule, b)
            assert got["held_out"][b]["weighted_tau"] == pytest.approx(h["weighted_tau"], abs=1e-6), (rule, b)
        assert got["mean_weighted_tau"] == pytest.approx(r["mean_weighted_tau"], abs=1e-6)
    for e, s in committed["singles"].items():
        assert study["singles"][e]["mean_weighted_tau"] == pytest.approx(s["mean_weighted_tau"], abs=1e-6), e


def test_held_out_choice_never_sees_the_held_out_benchmark(docs, study):
    """Changing the held-out benchmark's numbers cannot change the design chosen without it."""
    targets = {b: [lobo.Target(t, lobo.POOL) for t in d["targets"].values()] for b, d in docs.items()}
    ds = lobo.designs(max_size=2)
    table = {d: lobo.benchmark_scores(targets, d) for d in ds}
    for b in docs:
        others = [x for x in docs if x != b]
        chosen = lobo.choose(table, others, "mean")
        poisoned = {d: {**v, b: (1.0 if d != chosen else -1.0, 0.0)} for d, v in table.items()}
        assert lobo.choose(poisoned, others, "mean") == chosen


def test_designs_and_choice_rules():
    ds = lobo.designs(("a", "b", "c"), 2)
    assert [lobo.label(d) for d in ds] == ["a", "b", "c", "a+b", "a+b [borda]", "a+c", "a+c [borda]",
                                           "b+c", "b+c [borda]"]
    n = len(lobo.POOL)
    assert len(lobo.designs()) == n + 2 * (math.comb(n, 2) + math.comb(n, 3) + math.comb(n, 4))
    table = {(("a",), "zmean"): {"x": (0.9, 0.10), "y": (0.0, 0.01)},
             (("b",), "zmean"): {"x": (0.4, 0.05), "y": (0.4, 0.05)}}
    assert lobo.choose(table, ["x", "y"], "mean") == (("a",), "zmean")     # 0.45 > 0.40
    assert lobo.choose(table, ["x", "y"], "worst") == (("b",), "zmean")    # 0.40 > 0.00
    assert lobo.choose(table, ["x", "y"], "regret") == (("b",), "zmean")   # 0.05 < 0.055


def test_missing_members_are_skipped_and_empty_designs_are_random():
    tgt = {"gold": {"s1": [0.9], "s2": [0.5], "s3": [0.7]},
           "scores": {"logme": {"s1": 3.0, "s2": 1.0, "s3": 2.0}, "leep": {"s1": None, "s2": -1.0, "s3": -2.0}}}
    T = lobo.Target(tgt, ("logme", "leep", "nce"))
    assert T.evaluate((("logme", "leep"), "zmean")) == T.evaluate((("logme",), "zmean"))
    assert T.evaluate((("logme",), "zmean"))[1] == 0.0  # logme picks the best source
    wt, r1 = T.evaluate((("leep", "nce"), "zmean"))
    assert wt == 0.0 and r1 == pytest.approx(np.mean([0.0, 0.4 / 0.9, 0.2 / 0.9]))


def test_zmean_is_the_library_combiner(docs):
    for design in [(("logme", "nleep", "leep"), "zmean"), (("gbc", "etran_lda"), "zmean"), (("logme",), "zmean")]:
        assert lobo.library_check({"model_zoo": docs["model_zoo"], "text_models": docs["text_models"]}, design) < 1e-9


def test_text_tasks_table_is_reproduced(tmp_path):
    lobo.build_text_tasks_table(tmp_path)
    got, committed = scoretables.load("text_tasks", tmp_path), scoretables.load("text_tasks")
    for est, row in scoretables.agreement(committed, got).items():
        assert row["missing"] == 0, est
        if est in STABLE:
            assert row["max_rel"] < 1e-6, (est, row)
        assert row["max_wtau"] < 0.05, (est, row)


def test_acceptance_checks_and_the_rule_chosen_by_them():
    """acceptance(): the four checks of issue 13 on a rule's held-out result; the committed
    recommendation picks a rule that passes them all and ships its design as the library default."""
    singles = {"logme": {"mean_weighted_tau": 0.5, "mean_regret@1": 0.08,
                         "per_benchmark": {"x": {"weighted_tau": 0.4, "regret@1": 0.2},
                                           "y": {"weighted_tau": 0.7, "regret@1": 0.0}}},
               "gbc": {"mean_weighted_tau": 0.45, "mean_regret@1": 0.03, "per_benchmark": {}}}
    good = {"held_out": {"x": {"weighted_tau": 0.5, "regret@1": 0.05}, "y": {"weighted_tau": 0.6, "regret@1": 0.0}},
            "mean_weighted_tau": 0.55, "mean_regret@1": 0.025}
    a = lobo.acceptance(good, singles, ["x", "y"])
    assert a["passes"] and all(c["holds"] for c in a["checks"].values())
    bad = {**good, "held_out": {**good["held_out"], "x": {"weighted_tau": 0.35, "regret@1": 0.3}}}
    a = lobo.acceptance(bad, singles, ["x", "y"])
    held = {k: c["holds"] for k, c in a["checks"].items()}
    assert not a["passes"] and held["worst-benchmark w-tau >= LogME's there"] is False
    assert held["worst-benchmark R@1 <= LogME's there"] is False and held["mean w-tau > every single estimator's"]
    committed = json.loads(COMMITTED.read_text())["recommendation"]
    assert committed["rule"] in committed["passing_rules"]
    from estimators.ranking import DEFAULT_ESTIMATORS

    assert list(DEFAULT_ESTIMATORS["models"]) == committed["models"]["estimators"]
    assert list(DEFAULT_ESTIMATORS["tasks"]) == committed["tasks"]["estimators"]
