"""Shared benchmark utilities: metrics over targets, markdown tables, plots, score caching.

Every benchmark ends in ``evaluate_rankings``: predictions ``{target: {method: {source: score}}}``
and gold values ``{target: {source: value}}`` -> per-target and mean metrics, a markdown report
``bench/results/<name>.md`` (with the command that made it), ``<name>.json`` (read by the
headline), and PNG plots. ``python -m bench.common`` rebuilds the headline table and heatmap
(estimators x benchmarks) from every ``bench/results/*.json``.

JSON schema written per benchmark (other benchmarks may write the same to join the headline)::

    {"benchmark": str, "title": str, "command": str,
     "summary": {method: {metric: mean over targets}},
     "per_target": {target: {method: {metric: value}}}, "info": {...}}
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = ROOT / "bench" / ".cache"
RESULTS_DIR = ROOT / "bench" / "results"

#: metric columns, in table order
METRICS = ("kendall_tau", "weighted_tau", "spearman", "regret@1", "regret@3", "regret@5",
           "tw_regret@1", "tw_regret@3", "tw_regret@5", "ndcg", "ndcg@5", "top3_precision")
LOWER_IS_BETTER = {"regret@1", "regret@3", "regret@5", "tw_regret@1", "tw_regret@3", "tw_regret@5"}
SHORT = {"kendall_tau": "tau-b", "weighted_tau": "w-tau", "spearman": "rho", "regret@1": "R@1",
         "regret@3": "R@3", "regret@5": "R@5", "tw_regret@1": "twR@1", "tw_regret@3": "twR@3",
         "tw_regret@5": "twR@5", "ndcg": "NDCG", "ndcg@5": "NDCG@5", "top3_precision": "P@3"}
METRIC_DOC = (
    "tau-b: Kendall tau-b; w-tau: weighted tau (hyperbolic weights, top ranks count more); rho: "
    "Spearman; R@k: regret@k, ESM form = (best gold - best gold among the top-k predicted) / best "
    "gold; twR@k: TaskWeb form = (mean gold of the k gold-best - mean gold of the k predicted-best) "
    "/ the former; NDCG / NDCG@5: NDCG with TaskWeb's rank-based relevance (n - gold rank, gains 2^rel - 1), full list / top 5; P@3: fraction of the "
    "3 gold-best among the 3 predicted-best. Means over targets; regrets lower is better."
)


# ------------------------------------------------------------------------------------ metrics
def metrics(pred: Mapping[str, float], gold: Mapping[str, float],
            regret_gold: Mapping[str, float] | None = None) -> dict[str, float]:
    """All metrics for one target. ``pred`` may hold NaN (the method failed on that source: it
    is ranked last). ``regret_gold`` (default ``gold``) is the absolute performance used by the
    regrets, when the ranking gold is a relative score (TaskWeb)."""
    from estimators import evaluation as ev

    srcs = sorted(gold)
    g = np.array([float(gold[s]) for s in srcs])
    p = np.array([float(pred.get(s, np.nan)) for s in srcs])
    bad = ~np.isfinite(p)
    if bad.all():
        return {m: math.nan for m in METRICS}
    if bad.any():  # failures rank last, tied
        p[bad] = np.nanmin(p) - 1.0 - abs(np.nanmin(p))
    rg = g if regret_gold is None else np.array([float(regret_gold[s]) for s in srcs])

    def value(fn, *args, **kw):
        try:
            return float(fn(*args, **kw))
        except ev.UndefinedMetric:
            return math.nan

    out = {
        "kendall_tau": value(ev.kendall_tau, p, g),
        "weighted_tau": value(ev.weighted_tau, p, g),
        "spearman": value(ev.spearman, p, g),
        "ndcg": value(ev.ndcg_at_k, p, g, None, gains="exponential", relevance="rank"),
        "ndcg@5": value(ev.ndcg_at_k, p, g, min(5, len(g)), gains="exponential", relevance="rank"),
        "top3_precision": value(ev.top_k_precision, p, g, min(3, len(g))),
    }
    for k in (1, 3, 5):
        out[f"regret@{k}"] = value(ev.regret_at_k, p, rg, k, form="esm") if k <= len(g) else math.nan
        out[f"tw_regret@{k}"] = value(ev.regret_at_k, p, rg, k, form="taskweb") if k <= len(g) else math.nan
    return {m: float(out[m]) for m in METRICS}


def tie_noise(pred: Mapping[str, float]) -> dict[str, float]:
    """One method's scores for one target, with a spread within floating-point noise made an
    exact tie (the mean): the ranking core's rule (``estimators.ranking.zscores``: std <=
    ``NOISE_RTOL`` * max |value|). Such scores order the sources by rounding, which differs between
    BLAS kernels (e.g. the H-score of n <= d examples is C - 1 for every source, +- 1e-15), so a
    benchmark reports them as a tie (no correlation, pessimistic regret) on every machine."""
    from estimators.ranking import NOISE_RTOL

    v = np.array([float(x) for x in pred.values()], dtype=np.float64)
    ok = np.isfinite(v)
    if ok.sum() < 2:
        return dict(pred)
    sd, top = float(v[ok].std()), float(np.abs(v[ok]).max())
    if sd > NOISE_RTOL * top:
        return dict(pred)
    mean = float(v[ok].mean())
    return {s: (mean if math.isfinite(float(x)) else float(x)) for s, x in pred.items()}


def mean_over_targets(per_target: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict:
    """{target: {method: {metric}}} -> {method: {metric: nanmean over targets, 'n_targets'}}."""
    methods = list(dict.fromkeys(m for t in per_target.values() for m in t))
    out = {}
    for m in methods:
        rows = [per_target[t][m] for t in per_target if m in per_target[t]]
        out[m] = {k: float(np.nanmean([r[k] for r in rows])) if any(np.isfinite(r[k]) for r in rows) else math.nan
                  for k in METRICS}
        out[m]["n_targets"] = sum(1 for r in rows if np.isfinite(r["kendall_tau"]))
    return out


def paired_vs(per_target, reference: str = "default", *, n_boot: int = 2000, seed: int = 0) -> dict:
    """How ``reference`` compares with every other method, paired over the targets both ranked.

    For weighted tau and regret@1: the mean per-target difference (reference - method; for regret
    lower is better, so a negative difference favours the reference), its 95% bootstrap interval
    (targets resampled with replacement, ``n_boot`` times, seeded) and per-target wins / ties /
    losses of the reference (ties: |difference| < 1e-9). With a handful of targets the intervals
    are wide: they say whether a lead is larger than the spread across targets, nothing more."""
    rng = np.random.default_rng(seed)
    out = {}
    methods = list(dict.fromkeys(m for t in per_target.values() for m in t))
    for m in methods:
        if m == reference:
            continue
        row = {}
        for metric, sign in (("weighted_tau", 1.0), ("regret@1", -1.0)):
            d = np.array([per_target[t][reference][metric] - per_target[t][m][metric] for t in per_target
                          if m in per_target[t] and reference in per_target[t]], dtype=float)
            d = d[np.isfinite(d)]
            if d.size == 0:
                continue
            boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
            lo, hi = np.percentile(boots, [2.5, 97.5])
            good = sign * d
            row[metric] = {"diff": float(d.mean()), "ci": [float(lo), float(hi)], "n": int(d.size),
                           "wins": int((good > 1e-9).sum()), "ties": int((np.abs(d) <= 1e-9).sum()),
                           "losses": int((good < -1e-9).sum())}
        if row:
            out[m] = row
    return out


def paired_table(paired: Mapping[str, Mapping], reference: str = "default") -> str:
    lines = [f"| method | Δ w-tau ({reference} − method) | 95% CI | W/T/L | Δ R@1 | 95% CI | W/T/L |",
             "|---|---|---|---|---|---|---|"]
    for m, row in paired.items():
        cells = []
        for metric in ("weighted_tau", "regret@1"):
            r = row.get(metric)
            cells += (["—"] * 3 if r is None else
                      [f"{r['diff']:+.3f}", f"[{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]", f"{r['wins']}/{r['ties']}/{r['losses']}"])
        lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- tables
def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{v:.{digits}f}"


def markdown_table(rows: Mapping[str, Mapping[str, float]], columns, *, header=None, first="method",
                   bold_best: bool = True) -> str:
    """Rows {label: {column: value}} as a GitHub markdown table; best value per column in bold."""
    columns = list(columns)
    best = {}
    if bold_best:
        for c in columns:
            vals = [r.get(c) for r in rows.values() if isinstance(r.get(c), float) and math.isfinite(r.get(c))]
            if vals:
                best[c] = min(vals) if c in LOWER_IS_BETTER else max(vals)
    names = header or [SHORT.get(c, c) for c in columns]
    lines = ["| " + " | ".join([first, *names]) + " |", "|" + "---|" * (len(columns) + 1)]
    for label, r in rows.items():
        cells = []
        for c in columns:
            s = _fmt(r.get(c))
            if c in best and isinstance(r.get(c), float) and math.isfinite(r.get(c)) and abs(r[c] - best[c]) < 1e-12:
                s = f"**{s}**"
            cells.append(s)
        lines.append("| " + " | ".join([f"`{label}`" if first == "method" else str(label), *cells]) + " |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- plots
def heatmap(matrix, row_labels, col_labels, path: Path, *, title: str, cmap="viridis",
            fmt="{:.2f}", center=None, colorbar_label=""):
    """Annotated heatmap PNG (NaN cells blank)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    M = np.asarray(matrix, dtype=float)
    h = max(3.0, 0.32 * len(row_labels) + 1.6)
    w = max(4.5, 0.62 * len(col_labels) + 3.2)
    fig, ax = plt.subplots(figsize=(w, h))
    kw = {}
    if center is not None and np.isfinite(M).any():
        span = np.nanmax(np.abs(M - center))
        kw = {"vmin": center - span, "vmax": center + span}
    im = ax.imshow(np.ma.masked_invalid(M), cmap=cmap, aspect="auto", **kw)
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
    if M.size <= 900:
        for i in range(M.shape[0]):
            for j in range(M.shape[1]):
                if np.isfinite(M[i, j]):
                    r, g, b, _ = im.cmap(im.norm(M[i, j]))
                    dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                    ax.text(j, i, fmt.format(M[i, j]), ha="center", va="center", fontsize=6.5,
                            color="white" if dark else "black")
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label=colorbar_label)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------- evaluation
def evaluate_rankings(name: str, preds, gold, *, title: str, command: str, out_dir: Path = RESULTS_DIR,
                      regret_gold=None, info: dict | None = None, notes: str = "", gold_spread=None,
                      matrix_plot: tuple | None = None, elapsed: float | None = None,
                      method_order=None, per_target_style: str = "full", group_by=None,
                      show_gold_values: bool = True, ablation=None, ablation_note: str = "",
                      held_out=None, held_out_note: str = "", reference: str = "default") -> dict:
    """Score predictions against gold per target, print and write the report; returns the JSON dict.

    preds: {target: {method: {source: score}}}; gold: {target: {source: value}};
    regret_gold: optional {target: {source: absolute value}} for the regrets;
    gold_spread: optional {target: {source: seed std}} (reported);
    matrix_plot: optional (matrix, row_labels, col_labels, title) for <name>_matrix.png;
    per_target_style: "full" (a table per target) or "compact" (targets x methods, w-tau and R@1);
    group_by: optional fn(target) -> group label; adds mean tables per group;
    show_gold_values: False keeps raw gold numbers out of the report (data without a licence);
    ablation: optional {target: {combination: {source: score}}} (e.g. from ``zmean``): evaluated the
        same way and reported in a separate "Combinations" table (JSON key ``ablation``), so the
        headline keeps to the methods themselves;
    held_out: optional target names added after the default was designed: their mean is reported
        as a "Held-out check" (JSON key ``held_out_summary``);
    reference: the method paired against every other one (``paired_vs``; JSON key ``paired``).
    """
    def per_target_metrics(P):  # {target: {method: scores}} -> {target: {method: metrics}}
        return {t: {m: metrics(p, gold[t], None if regret_gold is None else regret_gold[t])
                    for m, p in P[t].items()} for t in gold}

    per_target = per_target_metrics(preds)
    summary = mean_over_targets(per_target)
    if method_order:
        summary = {m: summary[m] for m in method_order if m in summary} | {m: v for m, v in summary.items() if m not in method_order}
    out_dir.mkdir(parents=True, exist_ok=True)
    report = [f"# {title}", "", f"Made by `{command}` (from the repository root)"
              + (f" in {elapsed:.0f} s" if elapsed is not None else "") + f", {time.strftime('%Y-%m-%d')}.", ""]
    if notes:
        report += [notes.strip(), ""]
    report += ["## Mean over targets", "", markdown_table(summary, METRICS), "", METRIC_DOC, ""]
    if gold_spread is not None:
        sp = [v for t in gold_spread.values() for v in t.values()]
        report += [f"Ground-truth seed spread: mean std over seeds {np.mean(sp):.4f}, max {np.max(sp):.4f} "
                   f"(per pair, accuracy units).", ""]
    paired = None
    if reference in summary and len(per_target) > 1:
        paired = paired_vs(per_target, reference)
        report += [f"## `{reference}` against each method, paired over targets", "",
                   f"Mean per-target difference, 95% bootstrap interval over targets, and `{reference}`'s "
                   f"wins / ties / losses per target (for R@1 a negative difference favours `{reference}`). "
                   "An interval that contains 0 means the lead is within the spread across targets.", "",
                   paired_table(paired, reference), ""]
    held_summary = None
    held = [t for t in (held_out or []) if t in per_target]
    if held:
        held_summary = mean_over_targets({t: per_target[t] for t in held})
        held_summary = {m: held_summary[m] for m in summary if m in held_summary}
        report += [f"## Held-out check: the {len(held)} targets added after the default was designed", "",
                   f"({', '.join(held)}{'; ' + held_out_note.strip() if held_out_note else ''})", "",
                   markdown_table(held_summary, METRICS), ""]
    ablation_summary = None
    if ablation:
        ablation_summary = mean_over_targets(per_target_metrics(ablation))
        report += ["## Combinations (ablation of the default ranker)", "", ablation_note.strip(), "",
                   markdown_table(ablation_summary, METRICS), ""]
    plots = []
    if matrix_plot is not None:
        M, rl, cl, mt = matrix_plot
        p = out_dir / f"{name}_matrix.png"
        heatmap(M, rl, cl, p, title=mt, cmap="magma")
        plots.append(p.name)
    # methods x targets weighted tau
    methods = list(summary)
    tnames = list(per_target)
    if len(tnames) > 40 and group_by is not None:  # too many targets for one plot: per group
        cols = list(dict.fromkeys(group_by(t) for t in tnames))
        W = np.array([[np.nanmean([per_target[t][m]["weighted_tau"] for t in tnames
                                   if group_by(t) == gname and m in per_target[t]]) for gname in cols]
                      for m in methods])
        what = "mean weighted tau per group"
    else:
        cols = tnames
        W = np.array([[per_target[t].get(m, {}).get("weighted_tau", np.nan) for t in tnames] for m in methods])
        what = "weighted tau per target"
    p = out_dir / f"{name}_weighted_tau.png"
    heatmap(W, methods, cols, p, title=f"{title}:\n{what}", cmap="RdYlGn", center=0.0)
    plots.append(p.name)
    report += ["## Plots", ""] + [f"![{q}]({q})" for q in plots] + [""]
    if group_by is not None:
        groups = list(dict.fromkeys(group_by(t) for t in tnames))
        for metric in ("weighted_tau", "regret@1"):
            rows = {}
            for gname in groups:
                sub = mean_over_targets({t: per_target[t] for t in tnames if group_by(t) == gname})
                rows[gname] = {m: sub[m][metric] for m in methods if m in sub}
            report += [f"## Mean {SHORT[metric]} per group", "",
                       markdown_table(rows, methods, first="group", header=methods, bold_best=False), ""]
    report += ["## Per target", ""]
    if per_target_style == "compact":
        for metric in ("weighted_tau", "regret@1"):
            rows = {t: {m: per_target[t][m][metric] for m in methods if m in per_target[t]} for t in tnames}
            report += [f"### {SHORT[metric]} per target", "",
                       markdown_table(rows, methods, first="target", header=methods, bold_best=False), ""]
    for t in (tnames if per_target_style == "full" else []):
        extra = ""
        if gold_spread is not None:
            extra = f" (gold seed std: mean {np.mean(list(gold_spread[t].values())):.4f})"
        best = max(gold[t], key=lambda s: gold[t][s])
        best_txt = f"`{best}` ({gold[t][best]:.4f})" if show_gold_values else f"`{best}`"
        report += [f"### {t}{extra}", "", f"gold best: {best_txt}", "",
                   markdown_table(per_target[t], ["kendall_tau", "weighted_tau", "regret@1", "regret@3",
                                                  "tw_regret@1", "ndcg", "top3_precision"]), ""]
    result = {"benchmark": name, "title": title, "command": command, "summary": summary,
              "per_target": per_target, "info": info or {}, "plots": plots}
    if ablation_summary is not None:
        result["ablation"] = ablation_summary
    if held_summary is not None:
        result["held_out_summary"] = held_summary
    if paired is not None:
        result["paired"] = paired
    (out_dir / f"{name}.md").write_text("\n".join(report))
    (out_dir / f"{name}.json").write_text(json.dumps(_jsonable(result), separators=(",", ":")))
    print(f"\n## {title}\n")
    print(markdown_table(summary, METRICS))
    if held_summary is not None:
        print(f"\n### held-out targets ({', '.join(held)})\n\n{markdown_table(held_summary, METRICS)}")
    print(f"\n(per-target tables: {out_dir / (name + '.md')})")
    return result


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        return None if not math.isfinite(float(o)) else float(f"{float(o):.6g}")
    if isinstance(o, np.integer):
        return int(o)
    return o


# ------------------------------------------------------------------ feature-based benchmarks
def _estimator_fingerprint(name: str) -> str:
    """Hash of the estimator's module source, so cached scores follow code changes."""
    import importlib

    import estimators

    mod = importlib.import_module(f"estimators.{estimators.info(name).target.split(':')[0]}")
    src = Path(mod.__file__).read_text()
    return hashlib.sha256(src.encode()).hexdigest()[:12]


def score_all(cache_name: str, candidates, labels, *, verbose=True):
    """Every features/probs estimator on every (target, source): {target: {est: {src: value|nan}}},
    plus {est: [error strings]}. Cached in bench/.cache/<cache_name>_scores.json."""
    import estimators

    path = CACHE_DIR / f"{cache_name}_scores.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    names = [e for e in estimators.names() if estimators.info(e).needs in ("features", "probs")]
    fps = {}
    for e in names:
        try:
            fps[e] = _estimator_fingerprint(e)
        except Exception as exc:  # module not written yet
            fps[e] = None
            print(f"  {e}: not available ({type(exc).__name__}: {exc})", file=sys.stderr)
    out, errors = {}, {}
    for t, cands in candidates.items():
        y = labels[t]
        out[t] = {}
        for e in names:
            out[t][e] = {}
            if fps[e] is None:
                for s in cands:
                    out[t][e][s] = math.nan
                errors.setdefault(e, []).append("module not available")
                continue
            for s, c in cands.items():
                X = c[estimators.info(e).needs]
                key = hashlib.sha256(np.ascontiguousarray(X).tobytes() + np.ascontiguousarray(y).tobytes()
                                     + f"{e}:{fps[e]}".encode()).hexdigest()[:20]
                if key in cache:
                    v = cache[key]
                    out[t][e][s] = math.nan if v is None or isinstance(v, str) else v
                    if isinstance(v, str):
                        errors.setdefault(e, []).append(v)
                    continue
                t0 = time.time()
                try:
                    v = estimators.score(e, X, y)
                    cache[key] = v
                except Exception as exc:  # record and go on: one failure must not stop the benchmark
                    v = math.nan
                    cache[key] = f"{t}/{s}: {type(exc).__name__}: {exc}"[:300]
                    errors.setdefault(e, []).append(cache[key])
                out[t][e][s] = v
                if verbose and time.time() - t0 > 5:
                    print(f"  slow: {e} on {t}/{s}: {time.time() - t0:.1f}s", file=sys.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cache))
    return out, errors


#: estimators tried as an addition to the default's set in the ablation
ABLATION_EXTRAS = ("nleep", "leep", "nce", "gbc", "etran_lda", "hscore_shrinkage", "transrate", "tmi", "static")
ABLATION_NOTE = ("The default's combination formula (`zmean`: mean of z-scores across the candidates) "
                 "applied to subsets of the estimators: the default's set without each member "
                 "(`-x`), and with one more estimator (`+x`). The `models` default set (logme, gbc, "
                 "hscore_shrinkage, tmi) was chosen by leave-one-benchmark-out over five benchmarks, "
                 "rule `worst` (`bench/results/lobo.md`), this one included: these rows show what each "
                 "member contributes, not a search. `tasks set` is the default for ESM-mapped features "
                 "(logme, etran_lda, hscore_shrinkage; see `bench/results/lobo.md`).")


def feature_combinations(P: Mapping[str, Mapping[str, float]]) -> dict[str, list[str]]:
    """Ablation sets around the default "models" estimators present in ``P``."""
    from estimators.ranking import DEFAULT_ESTIMATORS

    base = [e for e in DEFAULT_ESTIMATORS["models"] if e in P]
    out = {"default set": base}
    for e in base:
        out[f"-{e}"] = [m for m in base if m != e]
    for e in ABLATION_EXTRAS:
        if e in P and e not in base:
            out[f"+{e}"] = base + [e]
    out["default set, Borda (mean rank)"] = base
    out["tasks set"] = [e for e in DEFAULT_ESTIMATORS["tasks"] if e in P]
    return out


def run_feature_benchmark(name, candidates, labels, gold_runs, *, info, out_dir, command, elapsed, title,
                          extra_methods=None, held_out=None, held_out_note: str = ""):
    """Score estimators + static + the default ranker, evaluate against mean-of-seeds gold, report."""
    from estimators import info as einfo
    from estimators.ranking import rank_candidates, static_score

    t0 = time.time()
    scores, errors = score_all(name, candidates, labels)
    gold = {t: {s: float(np.mean(v)) for s, v in d.items()} for t, d in gold_runs.items()}
    spread = {t: {s: float(np.std(v)) for s, v in d.items()} for t, d in gold_runs.items()}
    preds, ablation = {}, {}
    write_score_table(name, library_score_table(candidates, labels, scores), gold_runs, kind="models",
                      meta={t: {s: c.get("meta") for s, c in cands.items()} for t, cands in candidates.items()})
    for t, cands in candidates.items():
        P = {}
        for e, d in scores[t].items():
            sign = 1.0 if einfo(e).higher_is_better else -1.0
            P[e] = {s: sign * v for s, v in d.items()}
        P["static"] = {s: static_score(c["meta"]) for s, c in cands.items()}
        pre = {s: {e: scores[t][e][s] for e in scores[t] if math.isfinite(scores[t][e][s])} for s in cands}
        ranked = rank_candidates({s: {**c, "scores": pre[s]} for s, c in cands.items()}, labels[t],
                                 bootstrap=0)
        P["default"] = {r["name"]: r["score"] for r in ranked}
        # the same with the static size prior switched on (weight 0.25): reported for transparency
        ranked = rank_candidates({s: {**c, "scores": pre[s]} for s, c in cands.items()}, labels[t], bootstrap=0,
                                 weights={"static": 0.25})
        P["default+static"] = {r["name"]: r["score"] for r in ranked}
        for label, fn in (extra_methods or {}).items():
            P[label] = fn(cands, labels[t], pre)
        preds[t] = P
        ablation[t] = {label: zmean(P, members, borda="Borda" in label)
                       for label, members in feature_combinations(P).items()}
    names = list(preds[next(iter(preds))])
    order = ["default", "default+static", "static"] + [m for m in names if m not in ("default", "default+static", "static")]
    # gold transfer matrix (sources x targets)
    tnames = list(gold)
    snames = list(gold[tnames[0]])
    M = np.array([[gold[t][s] for t in tnames] for s in snames])
    err_lines = [f"- `{e}` failed on {len(v)} (target, source) pair(s), ranked last there; e.g. {v[0]}"
                 for e, v in errors.items() if v]
    notes = (info.get("notes", "") + "\n\n" if isinstance(info, dict) and info.get("notes") else "")
    notes += ("Methods: every estimator of `estimators.names()` that scores features or source "
              "probabilities (sign-corrected so higher = predicted better), `static` = log10(params) + "
              "log10(1 + source-set size) (target-agnostic), `default` = `estimators.ranking.rank_candidates` "
              "with its default settings (z-scored mean of logme, gbc, hscore_shrinkage and tmi), "
              "`default+static` = the same with `weights={'static': 0.25}`.")
    if err_lines:
        notes += "\n\nEstimator failures:\n" + "\n".join(err_lines)
    res = evaluate_rankings(
        name, preds, gold, title=title, command=command, out_dir=out_dir, info=info, notes=notes,
        gold_spread=spread, elapsed=elapsed + (time.time() - t0), method_order=order,
        matrix_plot=(M, snames, tnames, f"{title}: fine-tuned test accuracy (mean of seeds)"),
        ablation=ablation, ablation_note=ABLATION_NOTE, held_out=held_out, held_out_note=held_out_note,
    )
    return res


SCORES_DIR = ROOT / "bench" / "data" / "scores"


def library_score_table(candidates, labels, scores=None, **params) -> dict:
    """Every features/probs estimator's raw value per (target, source) as the library's ranker
    sees it: ``rank_candidates(..., estimators=<all>)`` with ``scores`` ({target: {est: {src:
    value}}}, e.g. from ``score_all``) passed as precomputed values, so only failures are
    recomputed -- with the ranker's fallback settings (``FALLBACK_PARAMS``) -- and an estimator the
    ranker skips on a target is NaN for every source there. -> {target: {est: {src: value}}}."""
    import estimators
    from estimators.ranking import rank_candidates

    names = [e for e in estimators.names() if estimators.info(e).needs in ("features", "probs")]
    out = {}
    for t, cands in candidates.items():
        pre = {s: {e: v for e in names if math.isfinite(v := float((scores or {}).get(t, {}).get(e, {}).get(s, math.nan)))}
               for s in cands}
        usable = [e for e in names if estimators.info(e).needs == "features"
                  or all(c.get("probs") is not None for c in cands.values())]
        ranked = rank_candidates({s: {k: c[k] for k in ("features", "probs") if c.get(k) is not None}
                                  | {"scores": pre[s]} for s, c in cands.items()},
                                 labels[t], estimators=usable, bootstrap=0, **params)
        out[t] = {e: {r["name"]: float(r["scores"].get(e, math.nan)) for r in ranked} for e in usable}
    return out


def write_score_table(name: str, table, gold_runs, *, kind: str, task: str | Mapping[str, str] = "classification",
                      out_dir: Path | None = None, extra: Mapping | None = None, meta=None) -> Path:
    """The per-benchmark input of the leave-one-benchmark-out study (``bench.lobo``):
    ``bench/data/scores/<name>.json`` = {"benchmark", "kind" ("models" | "tasks"), "targets":
    {target: {"task": "classification" | "regression", "gold": {source: [value per seed]},
    "scores": {estimator: {source: raw value | null}}, "meta": optional {source: {"params",
    "source_size"}}}}}. ``gold`` is higher-is-better; ``meta`` ({target: {source: dict}}) feeds
    the ``static`` baseline."""
    out_dir = SCORES_DIR if out_dir is None else out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = {}
    for t in table:
        tk = task if isinstance(task, str) else task[t]
        targets[t] = {"task": tk, "gold": {s: [float(v) for v in np.atleast_1d(gold_runs[t][s])] for s in sorted(gold_runs[t])},
                      "scores": {e: {s: table[t][e].get(s) for s in sorted(gold_runs[t])} for e in table[t]}}
        if meta is not None and meta.get(t):
            targets[t]["meta"] = {s: dict(meta[t][s]) for s in sorted(gold_runs[t]) if meta[t].get(s)}
    doc = {"benchmark": name, "kind": kind, "targets": targets, **(dict(extra) if extra else {})}
    path = out_dir / f"{name}.json"
    def precise(o):  # 10 significant digits: close scores stay distinct (ranks, z-scores)
        if isinstance(o, dict):
            return {str(k): precise(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [precise(v) for v in o]
        if isinstance(o, (float, np.floating)):
            return None if not math.isfinite(float(o)) else float(f"{float(o):.10g}")
        return _jsonable(o)

    path.write_text(json.dumps(precise(doc), separators=(",", ":")))
    return path


def zmean(P: Mapping[str, Mapping[str, float]], members, *, borda: bool = False) -> dict[str, float]:
    """The default ranker's combination formula on precomputed, sign-corrected method scores:
    the mean over ``members`` of their z-scores across the sources (``estimators.ranking.zscores``).
    A member that failed (NaN) on some source is left out. ``borda=True`` averages the members'
    ranks instead (the usual alternative aggregation)."""
    from scipy.stats import rankdata

    from estimators.ranking import zscores

    scale = rankdata if borda else zscores
    srcs = sorted(next(iter(P.values())))
    cols = []
    for m in members:
        v = np.array([float(P[m].get(s, np.nan)) for s in srcs])
        if np.all(np.isfinite(v)):
            cols.append(scale(v))
    if not cols:
        return {s: math.nan for s in srcs}
    return {s: float(v) for s, v in zip(srcs, np.mean(np.array(cols), axis=0))}


# ------------------------------------------------------------------------------------ headline
def headline(out_dir: Path = RESULTS_DIR) -> str:
    """Estimators x benchmarks table and heatmaps (weighted tau, regret@1) from every results JSON."""
    results = []
    for p in sorted(out_dir.glob("*.json")):
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(d, dict) and "summary" in d and "benchmark" in d:
            results.append(d)
    if not results:
        raise SystemExit(f"no benchmark results in {out_dir}")
    benches = [d["benchmark"] for d in results]
    # the observed-transfer matrices have no features: their "default" is the similarity-weighted
    # prior the service uses (prior_sim), their "static" the mean over other targets
    for d in results:
        summ = d["summary"]
        for alias, real in (("default", "prior_sim"), ("static", "static_mean")):
            if alias not in summ and real in summ:
                summ[alias] = summ.pop(real)
    methods = list(dict.fromkeys(m for d in results for m in d["summary"]))
    first = [m for m in ("default", "static") if m in methods]
    methods = first + sorted(m for m in methods if m not in first)
    lines = ["# Headline: every method on every benchmark", "",
             "Made by `python -m bench.common` from the `bench/results/*.json` of each benchmark "
             "(see each benchmark's `.md` for the command that made it). On the observed-transfer "
             "matrices (`matrix_*`, no features) `default` is the similarity-weighted observed prior "
             "(`prior_sim`) and `static` the plain mean over the other targets (`static_mean`). "
             "— = the method does not apply to that benchmark.", ""]
    for metric in ("weighted_tau", "regret@1", "kendall_tau"):
        M = np.array([[_get(d["summary"], m, metric) for d in results] for m in methods])
        rows = {m: {b: M[i, j] for j, b in enumerate(benches)} for i, m in enumerate(methods)}
        lines += [f"## Mean {SHORT[metric]} ({metric})", "",
                  markdown_table(rows, benches, bold_best=False).replace("| method |", "| method |"), ""]
        if metric != "kendall_tau":
            png = out_dir / f"headline_{metric.replace('@', '')}.png"
            heatmap(M, methods, benches, png, title=f"mean {metric} (methods x benchmarks)",
                    cmap="RdYlGn_r" if metric in LOWER_IS_BETTER else "RdYlGn",
                    center=None if metric in LOWER_IS_BETTER else 0.0)
            lines += [f"![{png.name}]({png.name})", ""]
    if (out_dir / "lobo.json").exists():  # the leave-one-benchmark-out summary (bench.lobo)
        from bench.lobo import headline_section

        lines += headline_section(json.loads((out_dir / "lobo.json").read_text()))
    if (out_dir / "coverage.md").exists():  # the bootstrap's tied-with-top set (bench.coverage)
        lines += ["## How sure the default's top pick is", "",
                  *(out_dir / "coverage.md").read_text().splitlines()[2:], ""]
    text = "\n".join(lines)
    (out_dir / "headline.md").write_text(text)
    print(text)
    return text


def _get(summary, m, metric):
    v = summary.get(m, {}).get(metric)
    return math.nan if v is None else float(v)


if __name__ == "__main__":
    headline()
