"""Coverage of the "indistinguishable from the top" set (``estimators.uncertainty``) per benchmark.

For every classification target of the benchmarks with committed features, the library's default
ranking is bootstrapped over the target's examples (``rank_candidates(..., bootstrap=B)``, i.e.
``estimators.uncertainty``, B stratified resamples, seeded); the candidates marked
``tied_with_top`` form the set (tied with the top on the combined score: sampling noise). Beside
it, the *union* set: also every candidate some member estimator of the default ranks first or
cannot separate from its own top under its own bootstrap (estimator disagreement; non-empty
``tied_by``, see ``estimators.uncertainty``). Coverage = share of targets whose gold-best source
(mean of the seeds) is in the set; size = its mean number of candidates, also relative to the
number of candidates (= the coverage a random set of that size would have, for one gold best).
Which of the two ``tied_with_top`` is was chosen leave-one-benchmark-out (``lobo_choice``).
Regression targets are left out (the bootstrap resamples within classes; the service bootstraps
class-label targets only). ``model_zoo`` needs its local training cache (``python -m bench.model_zoo``).

    python -m bench.coverage [--B 100]   # -> bench/results/coverage.{md,json}

Needs ``estimators.uncertainty``; without it the command says so and writes nothing.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench import common


def available() -> bool:
    try:
        from estimators import uncertainty  # noqa: F401
    except ImportError:
        return False
    return True


def target_sets(candidates, y, *, kind: str = "models", B: int = 100, seed: int = 0) -> dict:
    """The default ranking's tied-with-top set on one target (``rank_candidates(..., bootstrap=B)``):
    {"order", "tied", "warnings"}."""
    from estimators.ranking import rank_candidates

    rows = rank_candidates(candidates, y, kind=kind, bootstrap=B, seed=seed)
    return {"order": [r["name"] for r in rows], "tied": sorted(r["name"] for r in rows if r.get("tied_with_top")),
            "tied_union": sorted(r["name"] for r in rows if r.get("tied_by")),
            "tied_by": {r["name"]: list(r.get("tied_by", [])) for r in rows if r.get("tied_by")},
            "warnings": list(rows[0].get("warnings", [])) if rows else []}


def benchmark_coverage(candidates, labels, gold_runs, *, kind="models", B=100) -> dict:
    per = {}
    for t, cands in candidates.items():
        g = {s: float(np.mean(v)) for s, v in gold_runs[t].items()}
        best = max(g.values())
        winners = {s for s, v in g.items() if v >= best - 1e-12}
        r = target_sets({s: {k: c[k] for k in ("features", "probs", "meta") if c.get(k) is not None}
                         for s, c in cands.items()}, labels[t], kind=kind, B=B)
        per[t] = {"covered": bool(winners & set(r["tied"])), "size": len(r["tied"]), "n_candidates": len(cands),
                  "covered_union": bool(winners & set(r["tied_union"])), "size_union": len(r["tied_union"]),
                  "top1_correct": r["order"][0] in winners,
                  "gold_best": sorted(winners), "tied": r["tied"], "tied_by": r["tied_by"],
                  "predicted_top": r["order"][0], "warnings": r["warnings"]}
    return {"n_targets": len(per), **summarise(list(per.values())), "per_target": per}


def summarise(rows) -> dict:
    """Coverage, mean size and mean relative size of the set (and of the union set)."""
    m = lambda k: float(np.mean([float(p[k]) for p in rows]))  # noqa: E731
    return {"coverage": m("covered"), "mean_size": m("size"), "mean_candidates": m("n_candidates"),
            "mean_relative_size": float(np.mean([p["size"] / p["n_candidates"] for p in rows])),
            "coverage_union": m("covered_union"), "mean_size_union": m("size_union"),
            "mean_relative_size_union": float(np.mean([p["size_union"] / p["n_candidates"] for p in rows])),
            "top1_correct": m("top1_correct")}


BENCHMARKS = ("image_zoo2", "text_models", "text_tasks", "model_zoo")
#: the two candidate definitions of ``tied_with_top``: (per-target covered key, size key)
DEFINITIONS = {"combined": ("covered", "size"), "union": ("covered_union", "size_union")}
TARGET_COVERAGE = 0.90


def lobo_choice(res: dict) -> dict:
    """Leave-one-benchmark-out choice of the definition: for each benchmark, among the definitions
    whose coverage over the *other* benchmarks' targets is >= TARGET_COVERAGE, the one with the
    smallest mean relative size there (none qualifies: the highest coverage); then its coverage
    and size on the held-out benchmark. Pooled over the held-out benchmarks' targets."""
    folds, held = {}, []
    for b in res:
        others = [p for x in res if x != b for p in res[x]["per_target"].values()]
        stats = {d: (float(np.mean([p[k] for p in others])), float(np.mean([p[s] / p["n_candidates"] for p in others])))
                 for d, (k, s) in DEFINITIONS.items()}
        ok = [d for d in DEFINITIONS if stats[d][0] >= TARGET_COVERAGE]
        d = min(ok, key=lambda x: stats[x][1]) if ok else max(DEFINITIONS, key=lambda x: stats[x][0])
        k, s = DEFINITIONS[d]
        rows = list(res[b]["per_target"].values())
        folds[b] = {"chosen": d, "others_coverage": stats[d][0], "others_relative_size": stats[d][1],
                    "held_out_coverage": float(np.mean([p[k] for p in rows])),
                    "held_out_mean_size": float(np.mean([p[s] for p in rows]))}
        held += [(p[k], p[s], p["n_candidates"]) for p in rows]
    return {"folds": folds, "coverage": float(np.mean([h[0] for h in held])) if held else float("nan"),
            "mean_size": float(np.mean([h[1] for h in held])) if held else float("nan"),
            "mean_relative_size": float(np.mean([h[1] / h[2] for h in held])) if held else float("nan")}


def inputs(names=BENCHMARKS):
    """{benchmark: (candidates, labels, gold_runs, kind)} for the benchmarks with features
    (classification targets); ``model_zoo`` needs its local training cache."""
    from bench import image_zoo2, lobo, model_zoo, text_models

    out = {}
    if "model_zoo" in names:
        try:  # needs the model zoo's training cache (bench/.cache/model_zoo): local runs only
            c, lab, g, _, _ = model_zoo.compute(verbose=False)
            out["model_zoo"] = (c, lab, g, "models")
        except Exception as exc:  # noqa: BLE001 -- reported, the other benchmarks still run
            print(f"model_zoo left out: {type(exc).__name__}: {exc}")
    if "text_tasks" in names:
        c, lab, g = lobo.text_tasks_inputs()
        out["text_tasks"] = (c, lab, g, "tasks")
    for name, mod in (("image_zoo2", image_zoo2), ("text_models", text_models)):
        if name not in names:
            continue
        cands, labels, gold, meta = mod.load_inputs()
        cls = [t for t, m in meta["targets"].items() if m["task"] == "classification"]
        out[name] = ({t: cands[t] for t in cls}, labels, gold, "models")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--B", type=int, default=100)
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    ap.add_argument("--benchmarks", default=",".join(BENCHMARKS), help="comma-separated subset of " + ", ".join(BENCHMARKS))
    ap.add_argument("--merge", type=Path, nargs="+", help="report the per-benchmark results of earlier runs "
                    "(their coverage.json files, same B; e.g. one process per benchmark) instead of computing")
    args = ap.parse_args(argv)
    names = [b for b in args.benchmarks.split(",") if b]
    if not available():
        print("estimators.uncertainty is not available: nothing to measure")
        return 1
    t0 = time.time()
    if args.merge:
        res, seconds = {}, 0.0
        for f in args.merge:
            d = json.loads(f.read_text())
            if d["B"] != args.B:
                raise SystemExit(f"{f}: B={d['B']}, not {args.B}")
            seconds += float(d.get("seconds", 0.0))
            res.update({k: v for k, v in d.items() if isinstance(v, dict) and "per_target" in v})
        res = {b: res[b] for b in BENCHMARKS if b in res}
    else:
        res = {name: benchmark_coverage(c, lab, g, kind=k, B=args.B) for name, (c, lab, g, k) in inputs(names).items()}
        seconds = time.time() - t0
    allp = [p for r in res.values() for p in r["per_target"].values()]
    total = {"n_targets": len(allp), **summarise(allp)}
    choice = lobo_choice(res)
    L = ["# Coverage of the \"indistinguishable from the top\" set", "",
         f"Made by `python -m bench.coverage --B {args.B} --benchmarks {','.join(res)}` ({seconds:.0f} s of "
         + ("computing; here one process per benchmark, then `--merge`d" if args.merge else "computing")
         + ", on a shared, loaded 2-core machine). The library's default ranking (`rank_candidates`, default "
         f"estimators) bootstrapped over each classification target's examples ({args.B} stratified resamples, "
         "`estimators.uncertainty`, seed 0). Two candidate definitions of the set, both with the one-sided 5% "
         "bootstrap test: `combined` = the candidates the bootstrap cannot separate from the top on the combined "
         "score (sampling noise); `union` = those, plus every candidate that a member estimator of the default "
         "ranks first or cannot separate from its own top (estimator disagreement, `tied_by`). Coverage = share "
         "of targets whose gold-best source is in the set; relative size = size / candidates, i.e. what a random "
         "set of that size would cover. Regression targets are left out (no bootstrap for them); `model_zoo` "
         "has no committed features (its training cache is local).", "",
         "| benchmark | targets | candidates | `combined`: coverage | mean size | relative size | `union`: coverage | mean size | relative size | default's top-1 = gold best |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in [*res.items(), ("all", total)]:
        L.append(f"| {name} | {r['n_targets']} | {r['mean_candidates']:.1f} | {r['coverage']:.0%} | {r['mean_size']:.1f} | "
                 f"{r['mean_relative_size']:.0%} | {r['coverage_union']:.0%} | {r['mean_size_union']:.1f} | "
                 f"{r['mean_relative_size_union']:.0%} | {r['top1_correct']:.0%} |")
    L += ["", "## Which definition `tied_with_top` is: chosen leave-one-benchmark-out", "",
          f"For each benchmark, the definition with the smallest mean relative size among those covering >= "
          f"{TARGET_COVERAGE:.0%} of the *other* benchmarks' targets, then measured on the held-out one.", "",
          "| held-out benchmark | chosen without it | coverage on the others | relative size on the others | held-out coverage | held-out mean size |",
          "|---|---|---|---|---|---|"]
    for b, f in choice["folds"].items():
        L.append(f"| {b} | `{f['chosen']}` | {f['others_coverage']:.0%} | {f['others_relative_size']:.0%} | "
                 f"{f['held_out_coverage']:.0%} | {f['held_out_mean_size']:.1f} |")
    L += ["", f"Held out, pooled over the {total['n_targets']} targets: coverage **{choice['coverage']:.0%}**, mean size "
          f"**{choice['mean_size']:.1f}** of {total['mean_candidates']:.1f} candidates (relative {choice['mean_relative_size']:.0%}). "
          "`estimators.uncertainty` implements the definition chosen on every fold as `tied_with_top`; `tied_by` "
          "reports the members' view.", ""]
    missed = [(name, t, p) for name, r in res.items() for t, p in r["per_target"].items() if not p["covered"]]
    L += [f"Targets whose gold best is outside the `combined` set ({len(missed)}):", ""]
    L += [f"- {name}/{t}: gold best {', '.join(p['gold_best'])}; set {', '.join(p['tied'])}; predicted top "
          f"{p['predicted_top']}; members' view {p['tied_by']}" for name, t, p in missed] or ["- none"]
    L += [""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coverage.md").write_text("\n".join(L))
    (args.out / "coverage.json").write_text(json.dumps(common._jsonable({"B": args.B, "seconds": seconds, "total": total, "lobo_choice": choice, **res}), indent=1))
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
