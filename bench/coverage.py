"""Coverage of the "indistinguishable from the top" set (``estimators.uncertainty``) per benchmark.

For every classification target of the benchmarks with committed features, the library's default
ranking (``rank_candidates``' own steps: ``build_table`` + ``combine``) is bootstrapped over the
target's examples (``estimators.uncertainty.bootstrap``, B resamples, seeded); the candidates
marked ``tied_with_top`` form the set. Coverage = share of targets whose gold-best source (mean
of the seeds) is in the set; size = its mean number of candidates. Regression targets are left
out (the bootstrap resamples within classes).

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
    """The default ranking's tied-with-top set on one target: {"order", "tied", "warnings"}."""
    from estimators import uncertainty as U
    from estimators.ranking import _default_estimators, _validate, build_table, combine, default_weights

    cands, y = _validate(candidates, y)
    ests = _default_estimators(cands, kind)
    table = build_table(cands, y, ests, {})
    result = combine(table, default_weights(False, None))
    boot = U.bootstrap(table, result, y, U.features_values(cands, y, {}), weights=default_weights(False, None),
                       B=B, seed=seed)
    return {"order": [n for n, _, _ in result.order], "tied": sorted(n for n, t in boot.tied_with_top.items() if t),
            "warnings": list(boot.warnings)}


def benchmark_coverage(candidates, labels, gold_runs, *, kind="models", B=100) -> dict:
    per = {}
    for t, cands in candidates.items():
        g = {s: float(np.mean(v)) for s, v in gold_runs[t].items()}
        best = max(g.values())
        winners = {s for s, v in g.items() if v >= best - 1e-12}
        r = target_sets({s: {k: c[k] for k in ("features", "probs", "meta") if c.get(k) is not None}
                         for s, c in cands.items()}, labels[t], kind=kind, B=B)
        per[t] = {"covered": bool(winners & set(r["tied"])), "size": len(r["tied"]), "n_candidates": len(cands),
                  "gold_best": sorted(winners), "tied": r["tied"], "predicted_top": r["order"][0],
                  "warnings": r["warnings"]}
    cov = [p["covered"] for p in per.values()]
    return {"n_targets": len(per), "coverage": float(np.mean(cov)), "mean_size": float(np.mean([p["size"] for p in per.values()])),
            "mean_candidates": float(np.mean([p["n_candidates"] for p in per.values()])), "per_target": per}


def inputs():
    """{benchmark: (candidates, labels, gold_runs, kind)} for the benchmarks with committed features
    (classification targets)."""
    from bench import image_zoo2, text_models

    out = {}
    for name, mod in (("image_zoo2", image_zoo2), ("text_models", text_models)):
        cands, labels, gold, meta = mod.load_inputs()
        cls = [t for t, m in meta["targets"].items() if m["task"] == "classification"]
        out[name] = ({t: cands[t] for t in cls}, labels, gold, "models")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--B", type=int, default=100)
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    args = ap.parse_args(argv)
    if not available():
        print("estimators.uncertainty is not available: nothing to measure")
        return 1
    t0 = time.time()
    res = {name: benchmark_coverage(c, lab, g, kind=k, B=args.B) for name, (c, lab, g, k) in inputs().items()}
    allp = [p for r in res.values() for p in r["per_target"].values()]
    total = {"n_targets": len(allp), "coverage": float(np.mean([p["covered"] for p in allp])),
             "mean_size": float(np.mean([p["size"] for p in allp]))}
    L = ["# Coverage of the \"indistinguishable from the top\" set", "",
         f"Made by `python -m bench.coverage --B {args.B}` in {time.time() - t0:.0f} s. The library's default ranking "
         f"bootstrapped over each target's examples ({args.B} stratified resamples, `estimators.uncertainty`); "
         "coverage = share of targets whose gold-best source is in the set.", "",
         "| benchmark | targets | coverage | mean set size | candidates |", "|---|---|---|---|---|"]
    for name, r in res.items():
        L.append(f"| {name} | {r['n_targets']} | {r['coverage']:.0%} | {r['mean_size']:.1f} | {r['mean_candidates']:.0f} |")
    L += [f"| all | {total['n_targets']} | {total['coverage']:.0%} | {total['mean_size']:.1f} | |", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coverage.md").write_text("\n".join(L))
    (args.out / "coverage.json").write_text(json.dumps(common._jsonable({"B": args.B, "total": total, **res}), indent=1))
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
