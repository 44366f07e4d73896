"""Score tables: the committed per-benchmark estimator scores and gold values, and their report.

A score table (``bench/data/scores/<name>.json``, written by ``common.write_score_table``) holds,
per target, every features/probs estimator's raw value for every source as the library's ranker
computed it (fallback settings included), the gold value per seed (higher is better) and
optionally the sources' ``meta`` (for the ``static`` baseline). Everything downstream of the
expensive steps -- the benchmark report, the default ranker's order, the leave-one-benchmark-out
study (``bench.lobo``) -- is computed from these tables in seconds.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bench import common

SCORES_DIR = common.SCORES_DIR


def load(name: str, scores_dir: Path = SCORES_DIR) -> dict:
    return json.loads((scores_dir / f"{name}.json").read_text())


def merge(name: str, docs: list[dict]) -> dict:
    """Several score tables as one benchmark (targets prefixed by their table's name)."""
    kinds = {d["kind"] for d in docs}
    if len(kinds) != 1:
        raise ValueError(f"cannot merge score tables of different kinds {sorted(kinds)}")
    targets = {f"{d['benchmark']}/{t}": v for d in docs for t, v in d["targets"].items()}
    return {"benchmark": name, "kind": kinds.pop(), "targets": targets}


def finite_column(col: Mapping[str, float | None], sources) -> np.ndarray | None:
    """The column's values in ``sources`` order, or None when any is missing / non-finite."""
    v = np.array([np.nan if col.get(s) is None else float(col[s]) for s in sources])
    return v if np.all(np.isfinite(v)) else None


def higher_is_better(est: str) -> bool:
    from estimators import info

    return info(est.removesuffix("_binned")).higher_is_better


def default_ranking(tgt: Mapping, **kw) -> dict[str, float]:
    """The library's default ranker (``rank_candidates``, estimators=None) on the target's
    precomputed scores: {source: combined score}. ``kw`` goes to ``rank_candidates``."""
    from estimators.ranking import rank_candidates

    srcs = sorted(tgt["gold"])
    cands = {}
    for s in srcs:
        pre = {e: float(c[s]) for e, c in tgt["scores"].items()
               if not e.endswith("_binned") and c.get(s) is not None and math.isfinite(float(c[s]))}
        cand = {"scores": pre}
        if tgt.get("meta", {}).get(s):
            cand["meta"] = tgt["meta"][s]
        cands[s] = cand
    y = np.arange(2)  # unused: every value is precomputed
    ranked = rank_candidates(cands, y, **kw)
    return {r["name"]: r["score"] for r in ranked}


def predictions(doc: Mapping) -> dict[str, dict[str, dict[str, float]]]:
    """{target: {method: {source: sign-corrected score}}}: every estimator that scored all sources
    of the target, ``static`` (when meta is present) and ``default``."""
    from estimators.ranking import static_score

    out = {}
    for t, tgt in doc["targets"].items():
        srcs = sorted(tgt["gold"])
        P = {}
        for e, col in tgt["scores"].items():
            v = finite_column(col, srcs)
            if v is not None:
                P[e] = dict(zip(srcs, (v if higher_is_better(e) else -v).tolist()))
        if tgt.get("meta") and all(tgt["meta"].get(s) for s in srcs):
            P["static"] = {s: static_score(tgt["meta"][s]) for s in srcs}
        P["default"] = default_ranking(tgt, kind=doc.get("kind", "models"))
        out[t] = P
    return out


def gold(doc: Mapping) -> tuple[dict, dict]:
    """({target: {source: mean over seeds}}, {target: {source: std over seeds}})."""
    g = {t: {s: float(np.mean(v)) for s, v in tgt["gold"].items()} for t, tgt in doc["targets"].items()}
    sd = {t: {s: float(np.std(v)) for s, v in tgt["gold"].items()} for t, tgt in doc["targets"].items()}
    return g, sd


def report(doc: Mapping, *, title: str, command: str, notes: str = "", out_dir: Path = common.RESULTS_DIR,
           info: Mapping | None = None, elapsed: float | None = None, name: str | None = None) -> dict:
    """``common.evaluate_rankings`` on a score table: ``bench/results/<name>.{md,json}``."""
    preds = predictions(doc)
    g, sd = gold(doc)
    methods = sorted({m for p in preds.values() for m in p} - {"default", "static"})
    spread = np.mean([v for d in sd.values() for v in d.values()])
    notes = (notes.strip() + "\n\n" if notes else "") + (
        f"Gold: mean of the seeds; seed std over (target, source) pairs: mean {spread:.4f}. "
        "Methods: every estimator that scored every source of a target (sign-corrected; one that "
        "failed on a source is left out on that target, as the ranker skips it), `static` = "
        "log10(params) + log10(1 + source size), `default` = `estimators.ranking.rank_candidates` "
        "with its default settings on the precomputed scores. Rows `*_binned`: the estimator on the "
        "regression target binned into quantiles; `logme` on a regression target is LogME with "
        "`regression=True`.")
    return common.evaluate_rankings(
        name or doc["benchmark"], preds, g, title=title, command=command, out_dir=out_dir,
        info=dict(info or {}), notes=notes, gold_spread=sd, elapsed=elapsed,
        method_order=["default", "static", *methods],
    )


def agreement(a: Mapping, b: Mapping) -> dict[str, dict[str, float]]:
    """How far two score tables of the same benchmark agree, per estimator: ``max_rel`` = largest
    relative difference of a raw value (|a - b| / max(|a|, |b|, 1e-12)), ``max_wtau`` = largest
    difference, over targets, of the weighted tau of the estimator's order against the gold of
    ``a``, ``missing`` = values finite in one table and not in the other."""
    from bench.common import metrics

    out: dict[str, dict[str, float]] = {}
    if set(a["targets"]) != set(b["targets"]):
        raise ValueError(f"different targets: {sorted(set(a['targets']) ^ set(b['targets']))}")
    for t, ta in a["targets"].items():
        tb = b["targets"][t]
        srcs = sorted(ta["gold"])
        g = {s: float(np.mean(ta["gold"][s])) for s in srcs}
        for e in set(ta["scores"]) | set(tb["scores"]):
            row = out.setdefault(e, {"max_rel": 0.0, "max_wtau": 0.0, "missing": 0})
            ca, cb = ta["scores"].get(e, {}), tb["scores"].get(e, {})
            va = np.array([np.nan if ca.get(s) is None else float(ca[s]) for s in srcs])
            vb = np.array([np.nan if cb.get(s) is None else float(cb[s]) for s in srcs])
            both = np.isfinite(va) & np.isfinite(vb)
            row["missing"] += int((np.isfinite(va) ^ np.isfinite(vb)).sum())
            if both.any():
                rel = np.abs(va - vb)[both] / np.maximum(np.maximum(np.abs(va), np.abs(vb))[both], 1e-12)
                row["max_rel"] = max(row["max_rel"], float(rel.max()))
            if both.all():
                sign = 1.0 if higher_is_better(e) else -1.0
                wa = metrics(dict(zip(srcs, sign * va)), g)["weighted_tau"]
                wb = metrics(dict(zip(srcs, sign * vb)), g)["weighted_tau"]
                if math.isfinite(wa) and math.isfinite(wb):
                    row["max_wtau"] = max(row["max_wtau"], abs(wa - wb))
    return out
