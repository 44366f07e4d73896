"""Design out of benchmark: choose the default ranker by leave-one-benchmark-out (LOBO).

A *design* is a set of 1-4 features/probs estimators and an aggregation: ``zmean`` (the
library's combination: mean of the members' clipped z-scores across the candidates,
``estimators.ranking.rank_candidates`` with precomputed ``scores``) or ``borda`` (mean of the
members' ranks). On a target where a member cannot score every candidate (no source
probabilities for ``leep`` / ``nce``, a numerical failure) the member is left out there, as
``rank_candidates`` skips it; a design with no member left ranks nothing: it is scored as a random
order (weighted tau 0, the expected regret of a uniform pick).

For every benchmark B, the design with the best mean (over the *other* benchmarks) of the
benchmark-mean weighted tau is chosen and then evaluated on B -- its held-out score. Three
selection rules are reported: ``mean`` (the highest mean weighted tau over the other benchmarks),
``worst`` (the highest worst-benchmark weighted tau, max-min) and ``regret`` (the lowest mean
regret@1). Single estimators are evaluated on every benchmark as they are (nothing is chosen).

The library's default (``estimators.ranking.DEFAULT_ESTIMATORS``) is ``recommend``'s answer: the
rule whose LOBO result (z-mean designs, every benchmark) passes all four acceptance checks of
issue 13 (``acceptance``: mean w-tau above every single estimator's, worst benchmark >= LogME's
there, and the same for regret@1) -- on the committed tables only ``worst`` passes -- and the
design that rule chooses on all benchmarks (``models``) / without the tasks benchmark (``tasks``,
less members constant on ESM-mapped features). ``tests/bench/test_bench_lobo.py`` holds the
library default to the committed recommendation.

Benchmarks (score tables in ``bench/data/scores/``, each a committed input): ``model_zoo``
(``python -m bench.model_zoo``), ``text_tasks`` (ESM-mapped features of the committed
``bench/data/text``; ``python -m bench.lobo --tables``), ``image_zoo2``, ``text_models`` and
``regression`` (the regression targets of both). The observed-transfer matrices
(``bench.matrices``) carry no estimator scores, so they cannot take part.

    python -m bench.lobo            # seconds: tables -> bench/results/lobo.{md,json}
    python -m bench.lobo --tables   # also rebuild the text_tasks score table (ESM fits, ~1 min)
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bench import common, scoretables

#: the candidate estimators of a design (every features / probs estimator of the library)
POOL = ("logme", "nleep", "leep", "nce", "gbc", "etran_lda", "etran_energy", "hscore_shrinkage", "hscore",
        "transrate", "tmi", "sfda", "ped")
MAX_SIZE = 4
AGGREGATIONS = ("zmean", "borda")
BENCHMARKS = ("model_zoo", "text_tasks", "image_zoo2", "text_models", "regression")
REGRESSION_TABLES = ("image_zoo2_regression", "text_models_regression")
RULES = ("mean", "worst", "regret")
#: the ``models`` default before this study (LogME + N-LEEP, + LEEP with source probabilities)
PREVIOUS_DEFAULT_MODELS = ("logme", "nleep", "leep")


# ------------------------------------------------------------------------------- score tables
def text_tasks_inputs():
    """``bench.text_tasks``' committed inputs as candidates: (candidates {target: {source:
    {"features": base embeddings mapped through the source's ESM, "meta"}}}, labels, gold_runs)."""
    from threadpoolctl import threadpool_limits

    from bench import text_tasks as tt
    from estimators.esm import EmbeddingSpaceMap

    with threadpool_limits(limits=1):
        rows, A, meta = tt.load_committed()
        by_seed: dict[tuple[str, str], dict[int, float]] = {}
        for r in rows:
            by_seed.setdefault((r["target"], r["source"]), {})[int(r["seed"])] = float(r["accuracy"])
        complete: dict[str, set[int]] = {}
        for (t, s), d in by_seed.items():
            if s != tt.BASELINE:
                complete[t] = set(d) if t not in complete else complete[t] & set(d)
        f64 = lambda k: A[k].astype(np.float64)  # noqa: E731
        esms = {s: EmbeddingSpaceMap().fit(f64(f"src__{s}__base"), f64(f"src__{s}__ft"), seed=0)
                for s in meta["sources"]}
        cands, labels, gold_runs = {}, {}, {}
        for t in meta["targets"]:
            srcs = sorted(s for (tt_, s) in by_seed if tt_ == t and s != tt.BASELINE and s in esms)
            if not srcs:
                continue
            Xt = f64(f"tgt__{t}__base")
            labels[t] = A[f"tgt__{t}__labels"].astype(np.int64)
            cands[t] = {s: {"features": esms[s].transform(Xt)} for s in srcs}
            gold_runs[t] = {s: [v for sd, v in sorted(by_seed[(t, s)].items()) if sd in complete[t]] for s in srcs}
            for s in srcs:
                cands[t][s]["meta"] = {"source_size": meta["sources"][s]["n_train"], "params": meta["base_params"]}
    return cands, labels, gold_runs


def build_text_tasks_table(scores_dir: Path = common.SCORES_DIR) -> Path:
    """Score table of ``bench.text_tasks`` from its committed inputs: every features estimator on
    each target's base embeddings mapped through each source's ESM (fitted as ``text_tasks``
    fits them), gold = its committed fine-tuning accuracies (the seeds complete for every source)."""
    from threadpoolctl import threadpool_limits

    cands, labels, gold_runs = text_tasks_inputs()
    with threadpool_limits(limits=1):
        table = common.library_score_table(cands, labels)
    meta_s = {t: {s: c["meta"] for s, c in cands[t].items()} for t in cands}
    return common.write_score_table("text_tasks", table, gold_runs, kind="tasks", out_dir=scores_dir, meta=meta_s)


def load_benchmarks(scores_dir: Path = common.SCORES_DIR, names: Sequence[str] = BENCHMARKS) -> dict[str, dict]:
    """{benchmark: score table}; ``regression`` merges the regression tables present."""
    out = {}
    for b in names:
        if b == "regression":
            docs = [scoretables.load(n, scores_dir) for n in REGRESSION_TABLES if (scores_dir / f"{n}.json").exists()]
            if docs:
                out[b] = scoretables.merge("regression", docs)
        elif (scores_dir / f"{b}.json").exists():
            out[b] = scoretables.load(b, scores_dir)
    return out


# ------------------------------------------------------------------------------------ designs
def designs(pool: Sequence[str] = POOL, max_size: int = MAX_SIZE, aggregations=AGGREGATIONS) -> list[tuple]:
    """Every (members, aggregation) with 1..max_size members; single estimators once (zmean)."""
    out = []
    for k in range(1, max_size + 1):
        for members in itertools.combinations(pool, k):
            for a in (aggregations if k > 1 else aggregations[:1]):
                out.append((members, a))
    return out


def label(design) -> str:
    members, agg = design
    return "+".join(members) + ("" if len(members) == 1 or agg == "zmean" else f" [{agg}]")


class Target:
    """One target of a benchmark: gold, and each estimator's sign-corrected column (or None)."""

    def __init__(self, tgt: Mapping, pool: Sequence[str]):
        from scipy.stats import rankdata

        from estimators.ranking import zscores

        self.tgt = tgt
        self.sources = sorted(tgt["gold"])
        self.gold = np.array([float(np.mean(tgt["gold"][s])) for s in self.sources])
        self.z, self.r = {}, {}
        for e in pool:
            col = tgt["scores"].get(e)
            v = None if col is None else scoretables.finite_column(col, self.sources)
            if v is None:
                continue
            v = v if scoretables.higher_is_better(e) else -v
            self.z[e] = zscores(v)
            self.r[e] = rankdata(v)
        self._memo: dict[tuple, tuple[float, float]] = {}
        gmax = self.gold.max()
        self.random = (0.0, float(np.mean((gmax - self.gold) / gmax)) if gmax > 0 else math.nan)

    def combined(self, design) -> np.ndarray | None:
        members, agg = design
        cols = self.z if agg == "zmean" else self.r
        present = [e for e in members if e in cols]
        if not present:
            return None
        return np.mean([cols[e] for e in present], axis=0)

    def evaluate(self, design) -> tuple[float, float]:
        """(weighted tau, regret@1) of the design's order; random-order values when undefined."""
        members, agg = design
        cols = self.z if agg == "zmean" else self.r
        key = (tuple(e for e in members if e in cols), agg if len(members) > 1 else "zmean")
        if key in self._memo:
            return self._memo[key]
        p = self.combined(design)
        out = self.random if p is None else metrics(p, self.gold)
        self._memo[key] = out
        return out


def metrics(p: np.ndarray, g: np.ndarray) -> tuple[float, float]:
    from estimators import evaluation as ev

    try:
        wt = float(ev.weighted_tau(p, g))
    except ev.UndefinedMetric:
        wt = math.nan
    if not math.isfinite(wt):  # constant prediction: no order, random expectation
        wt = 0.0
    try:
        r1 = float(ev.regret_at_k(p, g, 1, form="esm"))
    except ev.UndefinedMetric:
        r1 = math.nan
    return wt, r1


def benchmark_scores(targets: Mapping[str, Sequence[Target]], design) -> dict[str, tuple[float, float]]:
    """{benchmark: (mean weighted tau, mean regret@1) over its targets}."""
    out = {}
    for b, ts in targets.items():
        vals = np.array([t.evaluate(design) for t in ts])
        out[b] = (float(np.mean(vals[:, 0])), float(np.nanmean(vals[:, 1])) if np.isfinite(vals[:, 1]).any() else math.nan)
    return out


def choose(table: Mapping[tuple, Mapping[str, tuple[float, float]]], benches: Sequence[str], rule: str) -> tuple:
    """The design that is best over ``benches`` by ``rule`` (ties: fewer members, then label)."""
    def key(d):
        wt = [table[d][b][0] for b in benches]
        rg = [table[d][b][1] for b in benches]
        if rule == "mean":
            v = -float(np.mean(wt))
        elif rule == "worst":
            v = -float(np.min(wt))
        elif rule == "regret":
            v = float(np.nanmean(rg))
        else:
            raise ValueError(f"unknown rule {rule!r}")
        return (round(v, 12), len(d[0]), label(d))
    return min(table, key=key)


def library_check(bench_docs: Mapping[str, Mapping], design) -> float:
    """Largest |difference| between the combined scores of ``rank_candidates`` (the library's
    combiner, precomputed scores) and this module's z-mean, over every target: must be ~0."""
    worst = 0.0
    members, agg = design
    if agg != "zmean":
        return 0.0
    for doc in bench_docs.values():
        for tgt in doc["targets"].values():
            T = Target(tgt, members)
            p = T.combined(design)
            if p is None:
                continue
            lib = scoretables.default_ranking(tgt, estimators=[e for e in members if e in T.z])
            worst = max(worst, float(np.max(np.abs(np.array([lib[s] for s in T.sources]) - p))))
    return worst


# ------------------------------------------------------------------------------------ the study
def study(bench_docs: Mapping[str, Mapping], pool: Sequence[str] = POOL, max_size: int = MAX_SIZE,
          aggregations: Sequence[str] = AGGREGATIONS) -> dict:
    t0 = time.time()
    targets = {b: [Target(t, pool) for t in doc["targets"].values()] for b, doc in bench_docs.items()}
    benches = list(targets)
    ds = designs(pool, max_size, tuple(aggregations))
    table = {d: benchmark_scores(targets, d) for d in ds}
    out = {"benchmarks": benches, "n_targets": {b: len(v) for b, v in targets.items()},
           "n_designs": len(ds), "rules": {}}
    for rule in RULES:
        held = {}
        for b in benches:
            others = [x for x in benches if x != b]
            d = choose(table, others, rule)
            held[b] = {"design": label(d), "members": list(d[0]), "aggregation": d[1],
                       "weighted_tau": table[d][b][0], "regret@1": table[d][b][1],
                       "in_sample_weighted_tau": float(np.mean([table[d][x][0] for x in others]))}
        wt = [held[b]["weighted_tau"] for b in benches]
        rg = [held[b]["regret@1"] for b in benches]
        full = choose(table, benches, rule)
        out["rules"][rule] = {"held_out": held, "mean_weighted_tau": float(np.mean(wt)),
                              "worst_weighted_tau": float(np.min(wt)), "mean_regret@1": float(np.nanmean(rg)),
                              "worst_regret@1": float(np.nanmax(rg)),
                              "chosen_on_all": {"design": label(full), "members": list(full[0]), "aggregation": full[1],
                                                "per_benchmark": {b: {"weighted_tau": table[full][b][0],
                                                                      "regret@1": table[full][b][1]} for b in benches}}}
    singles = {}
    for e in pool:
        d = ((e,), "zmean")
        per = {b: {"weighted_tau": table[d][b][0], "regret@1": table[d][b][1]} for b in benches}
        applies = {b: any(e in t.z for t in targets[b]) for b in benches}
        wt = [per[b]["weighted_tau"] for b in benches]
        rg = [per[b]["regret@1"] for b in benches]
        constant = {b: applies[b] and all(float(np.ptp(t.z[e])) == 0.0 for t in targets[b] if e in t.z) for b in benches}
        singles[e] = {"per_benchmark": per, "applies": applies, "constant": constant,
                      "mean_weighted_tau": float(np.mean(wt)),
                      "worst_weighted_tau": float(np.min(wt)), "mean_regret@1": float(np.nanmean(rg)),
                      "worst_regret@1": float(np.nanmax(rg))}
    out["singles"] = singles
    # the library's defaults as fixed designs (evaluated as they are), and the defaults before this study
    from estimators.ranking import DEFAULT_ESTIMATORS

    fixed = {"library default (models)": (tuple(DEFAULT_ESTIMATORS["models"]), "zmean"),
             "library default (tasks)": (tuple(DEFAULT_ESTIMATORS["tasks"]), "zmean"),
             "previous default (models)": (PREVIOUS_DEFAULT_MODELS, "zmean")}
    out["fixed"] = {}
    by_kind = {b: fixed["library default (tasks)" if bench_docs[b].get("kind") == "tasks" else "library default (models)"]
               for b in benches}
    for name, d in [*fixed.items(), ("library default by kind", None)]:
        if d is None:  # the set the library actually uses: the tasks set on the tasks benchmark
            sc = {b: benchmark_scores({b: targets[b]}, by_kind[b])[b] for b in benches}
            design = "models set / tasks set by kind"
        else:
            sc = benchmark_scores(targets, d)
            design = label(d)
        out["fixed"][name] = {"design": design,
                              "per_benchmark": {b: {"weighted_tau": sc[b][0], "regret@1": sc[b][1]} for b in benches},
                              "mean_weighted_tau": float(np.mean([sc[b][0] for b in benches])),
                              "worst_weighted_tau": float(np.min([sc[b][0] for b in benches])),
                              "mean_regret@1": float(np.nanmean([sc[b][1] for b in benches])),
                              "worst_regret@1": float(np.nanmax([sc[b][1] for b in benches]))}
    # top designs in sample (all benchmarks), for context
    ranked = sorted(ds, key=lambda d: -np.mean([table[d][b][0] for b in benches]))[:10]
    out["top_in_sample"] = [{"design": label(d), "mean_weighted_tau": float(np.mean([table[d][b][0] for b in benches])),
                             "worst_weighted_tau": float(np.min([table[d][b][0] for b in benches])),
                             "per_benchmark": {b: table[d][b][0] for b in benches}} for d in ranked]
    checked = [(tuple(r["chosen_on_all"]["members"]), r["chosen_on_all"]["aggregation"]) for r in out["rules"].values()]
    out["library_check_max_abs_diff"] = max([library_check(bench_docs, d) for d in checked] + [0.0])
    out["seconds"] = time.time() - t0
    return out


# ------------------------------------------------------------------------------------- report
def _f(v, d=3):
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{d}f}"


def render(res: Mapping, command: str) -> str:
    B = res["benchmarks"]
    L = ["# Leave-one-benchmark-out: choosing the default ranker out of benchmark", "",
         f"Made by `{command}` from the score tables in `bench/data/scores/` ({res['n_designs']} designs: "
         f"every set of 1-{MAX_SIZE} of {', '.join(f'`{e}`' for e in POOL)}, aggregated by z-mean "
         "(the library's `rank_candidates`) or Borda mean rank). Targets per benchmark: "
         + ", ".join(f"{b} {res['n_targets'][b]}" for b in B) + ".", "",
         "For each held-out benchmark the design is chosen on the *other* benchmarks, then scored on the "
         "held-out one. Benchmark score = mean over its targets; w-tau = weighted Kendall tau, R@1 = "
         "relative regret@1 (lower is better). A member that cannot score a target (no source "
         "probabilities on the text benchmarks, a numerical failure) is skipped there as the library "
         "skips it; a design with no member left is scored as a random order (w-tau 0).", ""]
    for rule in RULES:
        r = res["rules"][rule]
        what = {"mean": "highest mean w-tau over the other benchmarks",
                "worst": "highest worst-benchmark w-tau over the other benchmarks (max-min)",
                "regret": "lowest mean regret@1 over the other benchmarks"}[rule]
        L += [f"## Rule `{rule}`: {what}", "",
              "| held-out benchmark | design chosen without it | w-tau held out | R@1 held out | LogME w-tau | LogME R@1 | w-tau on the others |",
              "|---|---|---|---|---|---|---|"]
        for b in B:
            h = res["rules"][rule]["held_out"][b]
            lg = res["singles"]["logme"]["per_benchmark"][b]
            flag = " ⚠" if h["weighted_tau"] < lg["weighted_tau"] - 1e-9 else ""
            L.append(f"| {b} | `{h['design']}` | {_f(h['weighted_tau'])}{flag} | {_f(h['regret@1'])} | "
                     f"{_f(lg['weighted_tau'])} | {_f(lg['regret@1'])} | {_f(h['in_sample_weighted_tau'])} |")
        L += ["", f"LOBO mean w-tau **{_f(r['mean_weighted_tau'])}**, worst {_f(r['worst_weighted_tau'])}; "
              f"mean R@1 {_f(r['mean_regret@1'])}, worst {_f(r['worst_regret@1'])}. "
              f"Chosen on all benchmarks: `{r['chosen_on_all']['design']}`. ⚠ = below LogME alone on that benchmark.", ""]
    L += ["## Every single estimator, on every benchmark (nothing chosen)", "",
          "| estimator | " + " | ".join(f"{b} w-tau" for b in B) + " | mean w-tau | worst w-tau | mean R@1 | worst R@1 |",
          "|---|" + "---|" * (len(B) + 4)]
    rows = sorted(res["singles"].items(), key=lambda kv: -kv[1]["mean_weighted_tau"])
    for e, s in rows:
        cells = [(_f(s["per_benchmark"][b]["weighted_tau"]) if s["applies"][b] else "n/a (0)") for b in B]
        L.append(f"| `{e}` | " + " | ".join(cells) + f" | {_f(s['mean_weighted_tau'])} | {_f(s['worst_weighted_tau'])} | "
                 f"{_f(s['mean_regret@1'])} | {_f(s['worst_regret@1'])} |")
    L += ["", "n/a (0): the estimator cannot score that benchmark's candidates (no source probabilities), "
          "counted as a random order.", "", "## Designs with the best in-sample mean (all benchmarks; optimistic)", "",
          "| design | " + " | ".join(B) + " | mean | worst |", "|---|" + "---|" * (len(B) + 2)]
    for d in res["top_in_sample"]:
        L.append(f"| `{d['design']}` | " + " | ".join(_f(d["per_benchmark"][b]) for b in B)
                 + f" | {_f(d['mean_weighted_tau'])} | {_f(d['worst_weighted_tau'])} |")
    L += ["", "## The library's defaults (`estimators.ranking.DEFAULT_ESTIMATORS`), evaluated as they are "
          "(in sample: every benchmark took part in choosing them)", "",
          "| design | " + " | ".join(B) + " | mean w-tau | worst | mean R@1 | worst R@1 |", "|---|" + "---|" * (len(B) + 4)]
    for name, f in res["fixed"].items():
        L.append(f"| {name}: `{f['design']}` | " + " | ".join(_f(f["per_benchmark"][b]["weighted_tau"]) for b in B)
                 + f" | {_f(f['mean_weighted_tau'])} | {_f(f['worst_weighted_tau'])} | {_f(f['mean_regret@1'])} | "
                 f"{_f(f.get('worst_regret@1'))} |")
    L += ["", f"Library check: the z-mean designs chosen on all benchmarks, recomputed with "
          f"`estimators.ranking.rank_candidates` (precomputed scores), differ from this module's z-mean by at most "
          f"{res['library_check_max_abs_diff']:.2e}.", ""]
    if res.get("findings"):
        L += ["## Findings (all designs)", "", *res["findings"], ""]
    for key, title in (("zmean_only", "z-mean designs only (what `rank_candidates` runs today), every benchmark"),
                       ("models_zmean_only", "z-mean designs only, the `models` benchmarks only")):
        if key not in res:
            continue
        sub = res[key]
        SB = sub["benchmarks"]
        L += [f"## {title}", "", f"{sub['n_designs']} designs.", "",
              "| rule | " + " | ".join(f"{b} (held out)" for b in SB) + " | LOBO mean w-tau | worst | mean R@1 | worst R@1 | chosen on all |",
              "|---|" + "---|" * (len(SB) + 5)]
        for rule, r in sub["rules"].items():
            cells = [f"`{r['held_out'][b]['design']}` {_f(r['held_out'][b]['weighted_tau'])}" for b in SB]
            L.append(f"| `{rule}` | " + " | ".join(cells) + f" | {_f(r['mean_weighted_tau'])} | {_f(r['worst_weighted_tau'])} | "
                     f"{_f(r['mean_regret@1'])} | {_f(r['worst_regret@1'])} | `{r['chosen_on_all']['design']}` |")
        L += ["", *sub["findings"], ""]
    if res.get("recommendation"):
        rec = res["recommendation"]
        mo, ta, bo = rec["models"], rec["tasks"], rec["borda"]
        from estimators.ranking import DEFAULT_ESTIMATORS

        same = (tuple(mo["estimators"]) == tuple(DEFAULT_ESTIMATORS["models"])
                and tuple(ta["estimators"]) == tuple(DEFAULT_ESTIMATORS["tasks"]))
        L += ["## The default chosen (`estimators.ranking.DEFAULT_ESTIMATORS`)", "",
              f"Rule for the rule: {rec['criterion']}. Acceptance of each rule's LOBO result (z-mean, every benchmark):", "",
              "| rule | " + " | ".join(next(iter(rec["acceptance"].values()))["checks"]) + " | passes |",
              "|---|" + "---|" * (len(next(iter(rec["acceptance"].values()))["checks"]) + 1)]
        for rule, a in rec["acceptance"].items():
            L.append(f"| `{rule}` | " + " | ".join(("yes" if c["holds"] else "**no**") + f" ({c['numbers']})"
                                                 for c in a["checks"].values()) + f" | {'yes' if a['passes'] else 'no'} |")
        L += ["", f"Chosen: rule `{rec['rule']}`"
              + ("" if rec["passing_rules"] else " (no rule passes every check: the best by the criterion)") + ".", "",
              f"- `models`: {tuple(mo['estimators'])} = the design rule `{mo['rule']}` chooses on all benchmarks. "
              f"Out of benchmark (the rule applied without each benchmark): mean w-tau {_f(mo['lobo_mean_weighted_tau'])}, "
              f"worst {_f(mo['lobo_worst_weighted_tau'])}, mean R@1 {_f(mo['lobo_mean_regret@1'])}, worst R@1 "
              f"{_f(mo['lobo_worst_regret@1'])}.",
              f"- `tasks`: {tuple(ta['estimators'])} = the design rule `{ta['rule']}` chooses *without* text_tasks "
              f"(`{ta['chosen_without_text_tasks']}`)"
              + (f", less {', '.join(ta['dropped_constant'])} (one value for every source on ESM-mapped features: "
                 "it adds nothing there)" if ta["dropped_constant"] else "")
              + f"; held out on text_tasks: w-tau {_f(ta['held_out_weighted_tau'])}, R@1 {_f(ta['held_out_regret@1'], 4)}. "
              "It is also the set the catalogue-scale statistics path computes (`estimators.esm_stats.SUPPORTED`).",
              f"- The library's `DEFAULT_ESTIMATORS` {'equal' if same else '**differ from**'} these "
              f"(models {tuple(DEFAULT_ESTIMATORS['models'])}, tasks {tuple(DEFAULT_ESTIMATORS['tasks'])}).",
              "- Where the rule's held-out design is below LogME alone (w-tau): "
              + (", ".join(f"{b} ({_f(h['weighted_tau'])} vs {_f(res['singles']['logme']['per_benchmark'][b]['weighted_tau'])}; "
                           f"R@1 {_f(h['regret@1'])} vs {_f(res['singles']['logme']['per_benchmark'][b]['regret@1'])})"
                           for b, h in mo["held_out"].items()
                           if h["weighted_tau"] < res["singles"]["logme"]["per_benchmark"][b]["weighted_tau"] - 1e-9) or "none") + ".",
              f"- Rank (Borda) aggregation, not in the library: best rule `{bo['rule']}`, LOBO mean "
              f"{_f(bo['lobo_mean_weighted_tau'])}, worst {_f(bo['lobo_worst_weighted_tau'])} "
              f"(chosen on all: `{bo['chosen_on_all']}`), against the chosen z-mean rule's {_f(mo['lobo_mean_weighted_tau'])} / "
              f"{_f(mo['lobo_worst_weighted_tau'])}.", ""]
    return "\n".join(L)


def run_studies(docs: Mapping[str, Mapping]) -> dict:
    """The full study (z-mean and Borda designs, every benchmark) plus two restricted ones: z-mean
    designs only (what ``rank_candidates`` can run today), and z-mean designs on the ``models``
    benchmarks only (the ``models`` kind's own out-of-benchmark choice)."""
    res = study(docs)
    res["findings"] = findings(res)
    zres = study(docs, aggregations=("zmean",))
    zres["findings"] = findings(zres)
    models = {b: d for b, d in docs.items() if d.get("kind") == "models"}
    mres = study(models, aggregations=("zmean",))
    mres["findings"] = findings(mres)
    res["zmean_only"] = {k: zres[k] for k in ("benchmarks", "n_designs", "rules", "top_in_sample", "findings")}
    res["models_zmean_only"] = {k: mres[k] for k in ("benchmarks", "n_designs", "rules", "top_in_sample", "findings")}
    res["recommendation"] = recommend(res)
    return res


def acceptance(rule_res: Mapping, singles: Mapping, benches: Sequence[str]) -> dict:
    """Issue 13's acceptance checks of one rule's LOBO result: mean weighted tau above every single
    estimator's mean; on the worst held-out benchmark (w-tau) at least LogME's there; mean
    regret@1 below every single estimator's; on the worst held-out benchmark (R@1) at most
    LogME's there."""
    h = rule_res["held_out"]
    lg = singles["logme"]["per_benchmark"]
    best_mean = max(singles, key=lambda e: singles[e]["mean_weighted_tau"])
    best_reg = min(singles, key=lambda e: singles[e]["mean_regret@1"])
    worst_w = min(benches, key=lambda b: h[b]["weighted_tau"])
    finite = [b for b in benches if math.isfinite(h[b]["regret@1"])]
    worst_r = max(finite, key=lambda b: h[b]["regret@1"])
    checks = {
        "mean w-tau > every single estimator's":
            (rule_res["mean_weighted_tau"] > singles[best_mean]["mean_weighted_tau"],
             f"{_f(rule_res['mean_weighted_tau'])} vs {best_mean} {_f(singles[best_mean]['mean_weighted_tau'])}"),
        "worst-benchmark w-tau >= LogME's there":
            (h[worst_w]["weighted_tau"] >= lg[worst_w]["weighted_tau"] - 1e-12,
             f"{worst_w}: {_f(h[worst_w]['weighted_tau'])} vs LogME {_f(lg[worst_w]['weighted_tau'])}"),
        "mean R@1 < every single estimator's":
            (rule_res["mean_regret@1"] < singles[best_reg]["mean_regret@1"],
             f"{_f(rule_res['mean_regret@1'], 4)} vs {best_reg} {_f(singles[best_reg]['mean_regret@1'], 4)}"),
        "worst-benchmark R@1 <= LogME's there":
            (h[worst_r]["regret@1"] <= lg[worst_r]["regret@1"] + 1e-12,
             f"{worst_r}: {_f(h[worst_r]['regret@1'], 4)} vs LogME {_f(lg[worst_r]['regret@1'], 4)}"),
    }
    return {"checks": {k: {"holds": bool(v[0]), "numbers": v[1]} for k, v in checks.items()},
            "passes": all(v[0] for v in checks.values())}


def recommend(res: Mapping) -> dict:
    """The default the study supports, by a rule fixed before looking at which design wins:

    1. the selection rule is judged by its LOBO result on the z-mean designs (what
       ``rank_candidates`` runs) over every benchmark: the rules whose result passes all four of
       issue 13's acceptance checks (``acceptance``); among them (or among all, when none
       passes -- then said so) the highest (LOBO mean + LOBO worst) / 2 of held-out w-tau;
    2. ``models`` default = the design that rule chooses on all benchmarks;
    3. ``tasks`` default = the design that rule chooses *without* text_tasks (the only tasks
       benchmark: its honest out-of-benchmark choice), less the members that give every source
       one value on it (TMI: invariant to the ESM's linear map, it adds nothing there)."""
    z = res["zmean_only"]
    B = z["benchmarks"]
    acc = {r: acceptance(z["rules"][r], res["singles"], B) for r in z["rules"]}
    crit = {r: (z["rules"][r]["mean_weighted_tau"] + z["rules"][r]["worst_weighted_tau"]) / 2 for r in z["rules"]}
    passing = [r for r in z["rules"] if acc[r]["passes"]]
    rule = max(passing or list(z["rules"]), key=lambda r: crit[r])
    zr = z["rules"][rule]
    held = zr["held_out"].get("text_tasks") or {}
    const = [e for e in held.get("members", []) if res["singles"].get(e, {}).get("constant", {}).get("text_tasks")]
    rb = max(res["rules"], key=lambda r: (res["rules"][r]["mean_weighted_tau"] + res["rules"][r]["worst_weighted_tau"]) / 2)
    return {"criterion": ("the selection rule whose LOBO result (z-mean designs, every benchmark) passes all of "
                          "issue 13's acceptance checks; among several, the highest (LOBO mean + LOBO worst) / 2 "
                          "of held-out weighted tau"),
            "acceptance": acc, "passing_rules": passing, "rule": rule,
            "models": {"rule": rule, "estimators": zr["chosen_on_all"]["members"],
                       "lobo_mean_weighted_tau": zr["mean_weighted_tau"],
                       "lobo_worst_weighted_tau": zr["worst_weighted_tau"],
                       "lobo_mean_regret@1": zr["mean_regret@1"], "lobo_worst_regret@1": zr["worst_regret@1"],
                       "held_out": {b: {"design": zr["held_out"][b]["design"],
                                        "weighted_tau": zr["held_out"][b]["weighted_tau"],
                                        "regret@1": zr["held_out"][b]["regret@1"]} for b in B},
                       "in_sample": zr["chosen_on_all"]["per_benchmark"]},
            "tasks": {"rule": rule, "estimators": [e for e in held.get("members", []) if e not in const],
                      "dropped_constant": const, "chosen_without_text_tasks": held.get("design"),
                      "held_out_weighted_tau": held.get("weighted_tau"), "held_out_regret@1": held.get("regret@1")},
            "borda": {"rule": rb, "lobo_mean_weighted_tau": res["rules"][rb]["mean_weighted_tau"],
                      "lobo_worst_weighted_tau": res["rules"][rb]["worst_weighted_tau"],
                      "chosen_on_all": res["rules"][rb]["chosen_on_all"]["design"]}}


def findings(res: Mapping) -> list[str]:
    """Plain statements of the acceptance checks, with the numbers."""
    B = res["benchmarks"]
    out = []
    singles = res["singles"]
    best_single_mean = max(singles.items(), key=lambda kv: kv[1]["mean_weighted_tau"])
    best_single_regret = min(singles.items(), key=lambda kv: kv[1]["mean_regret@1"])
    for rule in RULES:
        r = res["rules"][rule]
        beats_mean = r["mean_weighted_tau"] > best_single_mean[1]["mean_weighted_tau"]
        losses = [b for b in B if r["held_out"][b]["weighted_tau"] < singles["logme"]["per_benchmark"][b]["weighted_tau"] - 1e-9]
        worst_b = min(B, key=lambda b: r["held_out"][b]["weighted_tau"])
        out.append(
            f"- Rule `{rule}`: LOBO mean w-tau {_f(r['mean_weighted_tau'])} "
            f"{'>' if beats_mean else '<='} the best single estimator's mean ({best_single_mean[0]}, "
            f"{_f(best_single_mean[1]['mean_weighted_tau'])}); LOBO mean R@1 {_f(r['mean_regret@1'])} vs the "
            f"lowest single ({best_single_regret[0]}, {_f(best_single_regret[1]['mean_regret@1'])}). Worst held-out "
            f"benchmark: {worst_b} ({_f(r['held_out'][worst_b]['weighted_tau'])}, LogME there "
            f"{_f(singles['logme']['per_benchmark'][worst_b]['weighted_tau'])}). Below LogME alone on: "
            + (", ".join(f"{b} ({_f(r['held_out'][b]['weighted_tau'])} vs {_f(singles['logme']['per_benchmark'][b]['weighted_tau'])})"
                         for b in losses) or "none") + ".")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tables", action="store_true", help="rebuild the text_tasks score table first")
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    ap.add_argument("--scores", type=Path, default=common.SCORES_DIR)
    args = ap.parse_args(argv)
    if args.tables or not (args.scores / "text_tasks.json").exists():
        build_text_tasks_table(args.scores)
    docs = load_benchmarks(args.scores)
    res = run_studies(docs)
    command = "python -m bench.lobo"
    text = render(res, command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lobo.md").write_text(text)
    (args.out / "lobo.json").write_text(json.dumps(common._jsonable({"command": command, **res}), indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def headline_section(res: Mapping) -> list[str]:
    """Markdown lines for ``bench/results/headline.md``: the chosen default's leave-one-benchmark-out
    result (z-mean designs, every benchmark) against LogME and the best single estimators, and the
    acceptance checks."""
    B = res["benchmarks"]
    rec = res.get("recommendation") or {}
    z = res.get("zmean_only", res)
    L = ["## Leave-one-benchmark-out (`bench/results/lobo.md`, made by `python -m bench.lobo`)", "",
         "Weighted tau (R@1 = relative regret@1 in brackets) on each benchmark of the z-mean design chosen "
         "*without* it, for each selection rule (`mean` = best mean w-tau over the other benchmarks, "
         "`worst` = best worst-case, `regret` = lowest mean regret@1); below, designs evaluated as they are.", "",
         "| design | " + " | ".join(B) + " | mean w-tau | worst w-tau | mean R@1 | worst R@1 |",
         "|---|" + "---|" * (len(B) + 4)]
    for rule, r in z["rules"].items():
        mark = " (**chosen**)" if rule == rec.get("rule") else ""
        L.append(f"| LOBO, rule `{rule}`{mark} | "
                 + " | ".join(f"{_f(r['held_out'][b]['weighted_tau'])} ({_f(r['held_out'][b]['regret@1'])})" for b in B)
                 + f" | {_f(r['mean_weighted_tau'])} | {_f(r['worst_weighted_tau'])} | {_f(r['mean_regret@1'])} | "
                 f"{_f(r['worst_regret@1'])} |")
    for name, f in res["fixed"].items():
        L.append(f"| {name}: `{f['design']}` (in sample) | "
                 + " | ".join(f"{_f(f['per_benchmark'][b]['weighted_tau'])} ({_f(f['per_benchmark'][b]['regret@1'])})" for b in B)
                 + f" | {_f(f['mean_weighted_tau'])} | {_f(f['worst_weighted_tau'])} | {_f(f['mean_regret@1'])} | "
                 f"{_f(f.get('worst_regret@1'))} |")
    top = sorted(res["singles"].items(), key=lambda kv: -kv[1]["mean_weighted_tau"])[:4]
    for e, s in top:
        L.append(f"| `{e}` alone | "
                 + " | ".join(f"{_f(s['per_benchmark'][b]['weighted_tau'])} ({_f(s['per_benchmark'][b]['regret@1'])})" for b in B)
                 + f" | {_f(s['mean_weighted_tau'])} | {_f(s['worst_weighted_tau'])} | {_f(s['mean_regret@1'])} | "
                 f"{_f(s['worst_regret@1'])} |")
    if rec:
        a = rec["acceptance"][rec["rule"]]
        L += ["", f"Default chosen by rule `{rec['rule']}` (the rule whose LOBO result passes issue 13's acceptance: "
              + "; ".join(f"{k}: {'yes' if c['holds'] else 'NO'}, {c['numbers']}" for k, c in a["checks"].items())
              + f"): models `{'+'.join(rec['models']['estimators'])}`, tasks `{'+'.join(rec['tasks']['estimators'])}`."]
    return L + [""]
