"""Observed-transfer matrices: how well do *other targets'* fine-tuning results rank sources for a new target?

Data (read in place from ``../shared/benchmarks``, never copied):

* **TaskWeb** (Kim et al. 2023): 22 NLP tasks, 21 targets x 21 sources. Gold ranking value of
  (source s -> target t) = ``0.5*PC + 0.5*(0.2*PM - 0.1)`` from the ``(finetune, t5l)`` rows of
  ``taskweb_pairwise_scores.csv`` (TaskWeb's own score). Regrets use the absolute t5l
  fine-tuning score, mean over the runs in ``taskweb_transfer_runs.csv``.
* **Model recycling** (Choshen et al. 2023): per base architecture, fully tested intermediate
  checkpoints (plus the vanilla base, row 0) x 36 targets. Gold = the target column; values
  are handled as *gains* over the vanilla base on the same target (same order as the raw value,
  comparable across targets); regrets use the raw accuracy. The ``avg`` column is never used (it
  contains the held-out target).

Leave-one-target-out: for each held-out target t (in each matrix), the observed results of the
other targets in the same matrix, ``O = {u: {s: value(s -> u)}, u != t}``, predict t's ranking:

(a) ``static_mean``: mean of each source's values over the other targets
    (``observed_prior(O, uniform)``, no normalisation: values are gains).
(b) ``prior_sim``: ``observed_prior(O, sim)``, with target-target similarity ``sim(t, u)`` = Pearson
    correlation (clipped at 0) of t's and u's observed-result profiles *in other contexts*, over
    the sources both have there: for TaskWeb the 6 other (model, adaptation) settings (t5s/t5b
    fine-tuning, t5b adapters / BitFit, GPT-2 M, RoBERTa; key = setting/source); for model
    recycling the other 5 base architectures' checkpoints (key = base/checkpoint). No value of
    the held-out (target, context) column enters it. Falls back to (a) when every similarity is 0.
(c) ``probes_k`` (k = 1, 3, 5): the true values of the k sources ranked highest by (a) are revealed
    (k fine-tunings on the new target); ``sim(t, u)`` is computed on those probes only
    (``profile_similarity``: Pearson over >= 3 probes, else a Gaussian kernel on the mean squared
    difference with bandwidth = std of all observed values); the prediction is
    ``observed_prior(O, sim)`` with the probes placed at their revealed values.
    ``static_mean+probes_k`` is the control: the same probes revealed, uniform weights.
    ``prior_sim+probes_k``: (b) with the k sources it ranks highest revealed (what the service
    does once it has both other-context profiles and a few real fine-tunings).
``mnli_lp`` (model recycling only): the cheap linear-probe proxy that ships with the data.

    python -m bench.matrices            # ~1 min; writes bench/results/matrix_*.{md,json,png}
"""
from __future__ import annotations

import argparse
import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench import common
from estimators.ranking import observed_prior, profile_similarity

SHARED = common.ROOT.parent / "shared" / "benchmarks"
PROBES = (1, 3, 5)


@dataclass
class Matrix:
    """One observed-transfer matrix in the evaluated context."""

    name: str
    gold: dict[str, dict[str, float]]                 # target -> source -> ranking value (higher = better)
    absolute: dict[str, dict[str, float]]             # target -> source -> absolute performance (regrets)
    context: dict[str, dict[str, float]]              # target -> key -> value in other contexts (similarity b)
    extra: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # target -> method -> preds

    def others(self, target: str) -> dict[str, dict[str, float]]:
        """Observed results of every target except ``target`` (what a leave-one-out predictor sees)."""
        return {u: dict(v) for u, v in self.gold.items() if u != target}


def _f(x: str) -> float:
    return float(x) if x not in ("", None) else math.nan


# ------------------------------------------------------------------------------------- loaders
def load_taskweb(root: Path = SHARED, *, model: str = "t5l", adaptation: str = "finetune",
                 targets: list[str] | None = None) -> Matrix:
    pair = root / "taskweb" / "taskweb_pairwise_scores.csv"
    runs = root / "taskweb" / "taskweb_transfer_runs.csv"
    if not pair.exists():
        raise FileNotFoundError(f"{pair} not found: the shared/ folder must sit beside the repository")
    gold, context = {}, {}
    with pair.open() as fh:
        for r in csv.DictReader(fh):
            v = 0.5 * _f(r["pc_mean_relative_change"]) + 0.5 * (0.2 * _f(r["pm_fraction_positive"]) - 0.1)
            if r["model"] == model and r["adaptation"] == adaptation:
                gold.setdefault(r["target"], {})[r["source"]] = v
            elif r["model"] != "all":
                context.setdefault(r["target"], {})[f"{r['model']}/{r['adaptation']}/{r['source']}"] = v
    sums: dict[tuple, list] = {}
    with runs.open() as fh:
        for r in csv.DictReader(fh):
            if r["model"] == model and r["adaptation"] == adaptation and r["taskweb_score"] != "":
                sums.setdefault((r["target"], r["source"]), []).append(float(r["taskweb_score"]))
    absolute = {t: {s: float(np.mean(sums[(t, s)])) for s in gold[t]} for t in gold}
    if targets is not None:
        gold = {t: gold[t] for t in targets}
        absolute = {t: absolute[t] for t in targets}
    return Matrix("taskweb", gold, absolute, context)


def _read_table(path: Path):
    with path.open() as fh:
        rd = csv.reader(fh)
        head = next(rd)
        rows = [r for r in rd]
    cols = head[4:]
    raw = [r[1] for r in rows]
    counts = {n: raw.count(n) for n in set(raw)}
    names = [n if counts[n] == 1 else f"{n}#{r[0]}" for n, r in zip(raw, rows)]  # repeated checkpoints
    vals = np.array([[_f(x) for x in r[4:]] for r in rows])
    lp = np.array([_f(r[3]) for r in rows])
    return names, cols, vals, lp


RECYCLING_BASES = ("bert-base-cased", "bert-base-uncased", "roberta-base", "t5-base",
                   "google_t5-v1_1-base", "microsoft_deberta-v3-base")


def load_recycling(base: str, root: Path = SHARED, *, targets: list[str] | None = None,
                   max_sources: int | None = None) -> Matrix:
    """One base architecture's table; gains over the vanilla base (row 0) per target."""
    d = root / "model-recycling"
    tables = {b: _read_table(d / f"{b}_table.csv") for b in RECYCLING_BASES}
    names, cols, vals, lp = tables[base]
    keep = np.flatnonzero(np.isfinite(vals).any(axis=1))
    if max_sources is not None:
        keep = keep[:max_sources]
    gold, absolute, extra, context = {}, {}, {}, {}
    for j, t in enumerate(cols):
        if targets is not None and t not in targets:
            continue
        base_v = vals[0, j]
        rows = [i for i in keep if np.isfinite(vals[i, j])]
        gold[t] = {names[i]: float(vals[i, j] - base_v) for i in rows}
        absolute[t] = {names[i]: float(vals[i, j]) for i in rows}
        extra[t] = {"mnli_lp": {names[i]: float(lp[i]) for i in rows}}
        ctx = {}
        for b2, (n2, c2, v2, _) in tables.items():
            if b2 == base:
                continue
            j2 = c2.index(t)
            for i in range(1, len(n2)):
                if np.isfinite(v2[i, j2]):
                    ctx[f"{b2}/{n2[i]}"] = float(v2[i, j2] - v2[0, j2])
        context[t] = ctx
    return Matrix(f"recycling/{base}", gold, absolute, context, extra)


# ----------------------------------------------------------------------------------- predictors
def uniform(others) -> dict[str, float]:
    return {u: 1.0 for u in others}


def context_similarity(mat: Matrix, target: str) -> dict[str, float]:
    """(b): Pearson (>= 0) of the targets' profiles in other contexts; never reads mat.gold[target]."""
    others = {u: mat.context.get(u, {}) for u in mat.gold if u != target}
    return profile_similarity(others, mat.context.get(target, {}), min_shared=3)


def predict(mat: Matrix, target: str, method: str, k: int = 0) -> dict[str, float]:
    """Predicted value for every candidate source of ``target`` (the keys of mat.gold[target]).

    Only ``mat.others(target)``, ``mat.context`` and, for probes, the k revealed values of
    ``mat.gold[target]`` are read.
    """
    cands = sorted(mat.gold[target])
    O = mat.others(target)
    static = observed_prior(O, uniform(O), normalize="none")
    if method == "static_mean":
        pri = static
    elif method == "prior_sim":
        pri = observed_prior(O, context_similarity(mat, target), normalize="none")
    elif method in ("probes", "static_mean+probes", "prior_sim+probes"):
        chooser = static
        if method == "prior_sim+probes":
            chooser = observed_prior(O, context_similarity(mat, target), normalize="none")
        ranked = sorted(cands, key=lambda s: (-chooser.get(s, -np.inf), s))
        probes = {s: mat.gold[target][s] for s in ranked[:k]}
        if method == "probes":
            sim = profile_similarity(O, probes)
            pri = dict(observed_prior(O, sim, normalize="none"))
        else:
            pri = dict(chooser)
        pri.update(probes)
    else:
        raise ValueError(f"unknown method {method!r}")
    fallback = min(pri.values()) - 1.0 if pri else 0.0  # a source no other target observed: last
    return {s: float(pri.get(s, fallback)) for s in cands}


def methods_for(mat: Matrix) -> list[tuple[str, str, int]]:
    out = [("static_mean", "static_mean", 0), ("prior_sim", "prior_sim", 0)]
    for k in PROBES:
        out.append((f"probes_k{k}", "probes", k))
        out.append((f"static_mean+probes_k{k}", "static_mean+probes", k))
        out.append((f"prior_sim+probes_k{k}", "prior_sim+probes", k))
    return out


def predictions(mat: Matrix) -> dict:
    preds = {}
    for t in mat.gold:
        P = {label: predict(mat, t, m, k) for label, m, k in methods_for(mat) if k < len(mat.gold[t])}
        for label, p in mat.extra.get(t, {}).items():
            P[label] = p
        preds[t] = P
    return preds


# ------------------------------------------------------------------------------------------ run
def run(out_dir: Path = common.RESULTS_DIR, root: Path = SHARED, *, quick: bool = False) -> dict:
    t0 = time.time()
    results = {}
    order = ["prior_sim", "static_mean"] + [f"{p}_k{k}" for k in PROBES for p in ("probes", "static_mean+probes", "prior_sim+probes")]
    tw = load_taskweb(root)
    tnames = sorted(tw.gold)
    snames = sorted({s for t in tw.gold.values() for s in t})
    # TaskWeb has no licence: its numbers stay in ../shared (no matrix plot, no gold values here)
    results["taskweb"] = common.evaluate_rankings(
        "matrix_taskweb", predictions(tw), tw.gold, regret_gold=tw.absolute, out_dir=out_dir,
        title="TaskWeb (t5l fine-tuning), leave-one-target-out",
        command="python -m bench.matrices", method_order=order, elapsed=time.time() - t0,
        info={"n_targets": len(tnames), "n_sources": len(snames)},
        notes=__doc__.split("\n\n", 1)[1].split("    python -m")[0], show_gold_values=False,
        reference="prior_sim",
    )
    # model recycling: every base table; targets keyed base:target, one report
    preds, gold, absolute, per_base = {}, {}, {}, {}
    for base in RECYCLING_BASES:
        mat = load_recycling(base, root)
        p = predictions(mat)
        for t in mat.gold:
            if len(mat.gold[t]) < 6:
                continue
            key = f"{base}:{t}"
            preds[key], gold[key], absolute[key] = p[t], mat.gold[t], mat.absolute[t]
        per_base[base] = len(mat.gold[next(iter(mat.gold))])
    results["recycling"] = common.evaluate_rankings(
        "matrix_model_recycling", preds, gold, regret_gold=absolute, out_dir=out_dir,
        title="Model recycling (6 base architectures x 36 targets), leave-one-target-out",
        command="python -m bench.matrices", method_order=order + ["mnli_lp"], elapsed=time.time() - t0,
        info={"sources_per_base": per_base}, per_target_style="compact",
        group_by=lambda key: key.split(":")[0],
        notes=__doc__.split("\n\n", 1)[1].split("    python -m")[0], reference="prior_sim",
    )
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    ap.add_argument("--shared", type=Path, default=SHARED, help="path to shared/benchmarks")
    args = ap.parse_args(argv)
    run(args.out, args.shared)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
