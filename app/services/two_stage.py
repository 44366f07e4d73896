"""Two-stage tasks rankings for big catalogues: a cheap first stage over every source, the exact
default on the best.

A default tasks ranking of a classification target whose task candidates number more than
``TRANSFERRANK_TWO_STAGE_ABOVE`` (or any, with the request's ``two_stage: true``; never with
``two_stage: false``, explicit estimators, estimator parameters or ``prefilter_k``, the FAISS
option) runs in two stages:

1. **First stage, every source with an ESM on the service's base encoder**, in chunks on the
   worker backend (``app.services.task_scoring.run_chunks``): ``esm_logme_lowrank`` (LogME of the
   target truncated to its top ``TRANSFERRANK_TWO_STAGE_RANK`` principal directions, mapped through
   the ESM: ``estimators.esm_stats.logme_lowrank``, O(d^2 r) per source instead of O(d^3)) and the
   exact ``esm_etran_lda`` (O(n d C) per source). The first-stage score is the mean of their
   z-scores across the catalogue (as ``estimators.esm_stats.rank_two_stage``). The low-rank value is
   not an exact score: it is cached under its own estimator name ``stage1:esm_logme_lowrank`` with
   the rank in its parameters, so it can never be read as ``esm_logme``; ETran-LDA is exact and is
   cached under its ordinary key (the exhaustive path reads the same value).
2. **Exact default on the shortlist**: the ``TRANSFERRANK_TWO_STAGE_SHORTLIST`` best first-stage
   sources, plus ``TRANSFERRANK_TWO_STAGE_CALIBRATION`` sources drawn (seeded) from the rest, plus
   every task candidate the first stage cannot score (no ESM, another base encoder), go through the
   ordinary scoring path (``rankings.score_table``: cache, statistics path on the workers, fallback
   policy) and ``estimators.ranking.combine`` (skipped columns, unscored candidates, prior).
3. **Catalogue-wide normalisation** (``recombine``): the exhaustive default z-scores each column over
   every source; here each column's catalogue mean and spread are estimated by strata (the exactly
   scored sources known, the other first-stage sources represented by the random calibration sample;
   ETran-LDA: known for every source), as ``estimators.esm_stats.combine_shortlist`` does. The
   prior (feedback) column is z-scored over the exactly scored sources.

The response says so: ``two_stage`` (settings, counts, the exactly scored sources, the first-stage
estimators) and, per ranked item, ``stage`` = ``"exact"`` (the default's scores) or ``"first"``
(only the first stage: ranked after every exactly scored source, by first-stage score, with
``score`` None and the ``first_stage`` value). The bootstrap re-ranks the top ``BOOTSTRAP_TOP``
exactly scored sources among themselves, within ``BOOTSTRAP_BUDGET`` evaluations.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from app.core.logging import get_logger
from app.core.progress import ProgressFn, no_progress
from app.services import scores as scores_svc
from estimators.ranking import NOISE_RTOL, Z_CLIP, Combined, ScoreTable, zscores

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.services.context import Context

log = get_logger("two_stage")

FIRST_STAGE = "esm_logme_lowrank"  # the worker's first-stage column (app.workers.scoring.FIRST_STAGE)
STAGE1_ESTIMATOR = "stage1:esm_logme_lowrank"  # its score-cache name: never confused with esm_logme
EXACT_FIRST = "esm_etran_lda"  # exact, and cheap enough for every source
FIRST_CHUNK = 256  # sources per first-stage worker chunk
BOOTSTRAP_TOP = 5  # the bootstrap re-ranks this many of the best exactly scored sources
BOOTSTRAP_BUDGET = 300  # estimator evaluations of the two-stage bootstrap (B lowered to fit, >= 20): ~6 s at n=1000
SEED = 0


@dataclass
class FirstStage:
    """The first stage's outcome: per source first-stage score, the sources to score exactly."""

    scores: dict[str, float]  # source -> first-stage combined (mean z of low-rank LogME and ETran-LDA)
    lowrank: dict[str, float]
    lda: dict[str, float]
    shortlist: list[str]  # best first-stage sources, best first
    calibration: list[str]  # random sample of the rest
    kept: list[str]  # task candidates the first stage cannot score: scored exactly
    computed: int = 0
    cached: int = 0
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def exact(self) -> set[str]:
        return set(self.shortlist) | set(self.calibration) | set(self.kept)


def applies(ctx: Context, spec: Any, task_type: str, n_candidates: int) -> bool:
    """True when this ranking runs in two stages (see the module docstring)."""
    flag = getattr(spec, "two_stage", None)
    if flag is False or spec.candidates != "tasks" or spec.estimators is not None or spec.params \
            or spec.prefilter_k is not None or task_type != "classification":
        return False
    if flag is True:
        return True
    above = int(ctx.settings.two_stage_above)
    return above > 0 and n_candidates > above


def _z(values: np.ndarray) -> np.ndarray:
    """z-scores across sources, missing values (NaN) counted as the worst (as rank_two_stage)."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros_like(values)
    return zscores(np.where(finite, values, np.nanmin(values)))


def first_stage(ctx: Context, ds: Any, cands: list[Any], X_target: np.ndarray, y: np.ndarray,
                params_of: Callable[[str, Any], dict[str, Any]], progress: ProgressFn = no_progress
                ) -> FirstStage:
    """Score every eligible task candidate with the first stage (through the cache, on the workers)
    and pick the shortlist and the calibration sample."""
    from app.services import task_scoring

    t0 = time.perf_counter()
    st = ctx.settings
    base = st.base_encoder
    rank = int(st.two_stage_rank)
    eligible = [c for c in cands if c.kind == "task" and c.encoder == base and c.esm_key is not None]
    kept = [c.source for c in cands if c.kind == "task" and not (c.encoder == base and c.esm_key is not None)]
    ver = scores_svc.version()
    with ctx.Session() as s:
        cache = scores_svc.lookup_target(s, ds.sha256, [STAGE1_ESTIMATOR, EXACT_FIRST], ver)
    names = {STAGE1_ESTIMATOR: FIRST_STAGE, EXACT_FIRST: EXACT_FIRST}
    lowrank: dict[str, float] = {}
    lda: dict[str, float] = {}
    got = {STAGE1_ESTIMATOR: lowrank, EXACT_FIRST: lda}
    todo: list[tuple[Any, dict[str, tuple[dict[str, Any], str]]]] = []
    cached = 0
    for c in eligible:
        missing: dict[str, tuple[dict[str, Any], str]] = {}
        for est in (STAGE1_ESTIMATOR, EXACT_FIRST):
            params = params_of(EXACT_FIRST, c)
            if est == STAGE1_ESTIMATOR:
                params = dict(params, rank=rank)
            ph = scores_svc.params_hash(params)
            hit = cache.get(scores_svc.key(c.source, ds.sha256, c.encoder, est, ph, ver))
            if hit is not None:
                got[est][c.source] = float(hit.value)
                cached += 1
            else:
                missing[est] = (params, ph)
        if missing:
            todo.append((c, missing))
    computed = 0
    if todo:
        stats_path = str(ctx.blobs.path(task_scoring.target_stats_blob(ctx, ds.sha256, base, X_target, y)))
        cols = [FIRST_STAGE, EXACT_FIRST]
        done = 0
        for chunk, values in task_scoring.run_chunks(ctx, stats_path, todo, cols, chunk_sources=FIRST_CHUNK,
                                                     options={"rank": rank}):
            rows: list[dict[str, Any]] = []
            if values is not None:
                for i, (c, missing) in enumerate(chunk):
                    for est, (params, ph) in missing.items():
                        v = float(values[i, cols.index(names[est])])
                        if not math.isfinite(v):
                            continue
                        got[est][c.source] = v
                        rows.append(dict(source=c.source, source_kind="task", target_sha256=ds.sha256,
                                         encoder=c.encoder, estimator=est, params_hash=ph, params=params,
                                         version=ver, value=v, n=ds.n_examples, seconds=None))
            computed += scores_svc.store_many(ctx, rows)
            done += len(chunk)
            progress(done / len(todo), f"first stage: {done} of {len(todo)} sources")
    src = [c.source for c in eligible]
    lr = np.array([lowrank.get(s_, np.nan) for s_ in src])
    ld = np.array([lda.get(s_, np.nan) for s_ in src])
    first = (_z(lr) + _z(ld)) / 2.0 if src else np.zeros(0)
    order = sorted(range(len(src)), key=lambda i: (-first[i], src[i]))
    m = int(min(st.two_stage_shortlist, len(src)))
    shortlist = [src[i] for i in order[:m]]
    rest = sorted(src[i] for i in order[m:])
    k = int(min(st.two_stage_calibration, len(rest)))
    calibration = [rest[i] for i in sorted(np.random.default_rng(SEED).choice(len(rest), size=k, replace=False))] \
        if k else []
    out = FirstStage(scores={s_: float(first[i]) for i, s_ in enumerate(src)},
                     lowrank={s_: v for s_, v in lowrank.items()}, lda=dict(lda), shortlist=shortlist,
                     calibration=calibration, kept=kept, computed=computed, cached=cached,
                     seconds=time.perf_counter() - t0,
                     settings={"above": int(st.two_stage_above), "shortlist": int(st.two_stage_shortlist),
                               "calibration": int(st.two_stage_calibration), "rank": rank})
    log.info("two-stage first stage: %d sources (%d computed, %d cached) in %.2fs; %d shortlisted, %d calibration, "
             "%d kept", len(src), computed, cached, out.seconds, len(shortlist), len(calibration), len(kept))
    return out


def recombine(table: ScoreTable, res: Combined, fs: FirstStage) -> Combined:
    """``res`` (``combine`` over the exactly scored sources) with each weighted estimator column
    normalised as over the whole catalogue (the module docstring, step 3); the columns, weights,
    skipped columns, unscored candidates and prior are ``combine``'s."""
    exact = list(table.candidates)
    n_first = len(fs.scores)
    known_first = [c for c in exact if c in fs.scores and c not in fs.calibration]  # shortlist
    n_rest = n_first - len(known_first)  # first-stage sources outside the shortlist (calibration among them)
    scored = [n for n, s_, _ in res.order if s_ is not None]
    weighted = [c for c, w in res.weights.items() if w > 0]
    row = {c: i for i, c in enumerate(table.candidates)}
    z: dict[str, np.ndarray] = {}
    for c in weighted:
        if c == "prior":
            pv = np.array([res.prior.get(n, np.nan) for n in scored])
            fin = np.isfinite(pv)
            pv[~fin] = pv[fin].mean() if fin.any() else 0.0
            z[c] = zscores(pv)
            continue
        sign = 1.0 if table.higher_is_better[c] else -1.0
        col = sign * table.column(c)
        vals = np.array([col[row[n]] for n in scored])
        if c == EXACT_FIRST and fs.lda:
            pop = np.array([sign * v for v in fs.lda.values()] +
                           [col[row[n]] for n in exact if n not in fs.lda and np.isfinite(col[row[n]])])
            mu, var = float(pop.mean()), float(pop.var())
        else:
            known = np.array([col[row[n]] for n in exact if n not in fs.calibration and np.isfinite(col[row[n]])])
            sample = np.array([col[row[n]] for n in fs.calibration if np.isfinite(col[row[n]])])
            w_rest = float(n_rest) if sample.size else 0.0
            total = known.size + w_rest
            mu = (float(known.sum()) + w_rest * (float(sample.mean()) if sample.size else 0.0)) / total
            sq = (float((known * known).sum()) + w_rest * (float((sample * sample).mean()) if sample.size else 0.0))
            var = max(sq / total - mu * mu, 0.0)
        sd = math.sqrt(var)
        if sd == 0.0 or sd <= NOISE_RTOL * max(float(np.abs(vals).max(initial=0.0)), abs(mu)):
            z[c] = np.zeros_like(vals)
        else:
            z[c] = np.clip((vals - mu) / sd, -Z_CLIP, Z_CLIP)
    wsum = sum(res.weights[c] for c in weighted)
    score = np.zeros(len(scored))
    for c in weighted:
        score = score + res.weights[c] * z[c] / wsum
    items = [(n, float(score[i]), {c: float(z[c][i]) for c in weighted}) for i, n in enumerate(scored)]
    items.sort(key=lambda r: (-r[1], r[0]))
    rest = [r for r in res.order if r[1] is None]
    return Combined(order=[*items, *rest], skipped=res.skipped, weights=res.weights, unscored=res.unscored,
                    notes=res.notes, prior=res.prior)


def describe(fs: FirstStage, n_candidates: int) -> dict[str, Any]:
    """The response's ``two_stage`` block."""
    return {
        "applied": True,
        "first_stage": {"estimators": [f"{FIRST_STAGE} (rank {fs.settings['rank']}; not an exact score)",
                                       EXACT_FIRST],
                        "combine": "mean of the two z-scores across the first-stage sources",
                        "sources": len(fs.scores), "computed": fs.computed, "cached": fs.cached,
                        "seconds": round(fs.seconds, 4)},
        "settings": fs.settings,
        "candidates": n_candidates,
        "exact": len(fs.exact),
        "exact_sources": sorted(fs.exact),
        "shortlist": len(fs.shortlist),
        "calibration": len(fs.calibration),
        "kept": fs.kept,
        "first_stage_only": len(fs.scores) - len(set(fs.shortlist) | set(fs.calibration)),
        "normalisation": "each exact column z-scored with its catalogue mean and spread estimated by strata "
                         "(exactly scored sources known, the rest from the random calibration sample; "
                         f"{EXACT_FIRST}: known for every source)",
        "bootstrap": f"the top {BOOTSTRAP_TOP} exactly scored sources re-ranked among themselves",
    }


def first_stage_items(fs: FirstStage, cands: dict[str, Any], names: list[str], start_rank: int,
                      limit: int) -> list[dict[str, Any]]:
    """Ranking items for the first-stage-only sources (after every exactly scored one), best
    first-stage score first; at most ``limit``."""
    if limit <= 0:
        return []
    exact = fs.exact
    rest = sorted((s_ for s_ in fs.scores if s_ not in exact), key=lambda s_: (-fs.scores[s_], s_))[:limit]
    out = []
    for i, s_ in enumerate(rest):
        c = cands[s_]
        out.append({"source": s_, "kind": "task", "rank": start_rank + i, "score": None,
                    "scores": {e: (fs.lda.get(s_) if e == EXACT_FIRST else None) for e in names},
                    "details": {}, "has_esm": True, "source_info": c.meta, "stage": "first",
                    "first_stage": {"score": fs.scores[s_], FIRST_STAGE: fs.lowrank.get(s_),
                                    EXACT_FIRST: fs.lda.get(s_)},
                    "note": "first stage only (two-stage ranking): ranked after the exactly scored sources"})
    return out
