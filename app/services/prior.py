"""The observed-feedback prior of a ranking, applied only where it can change the order.

Feedback rows say "source S fine-tuned on target T reached metric M = v". For a ranking of
target T0 over candidates C:

1. Per target, the metric most candidates report is kept (values sign-corrected so higher is
   better; repeats averaged). A target where fewer than ``MIN_PER_TARGET`` candidates were
   observed carries no *relative* information (one accuracy says nothing about the others) and
   is not used.
2. A target is related when it is T0 itself (similarity 1) or its task embedding (mean base
   encoder embedding) has cosine similarity >= ``MIN_SIMILARITY`` with T0's; unrelated targets
   are not used.
3. The prior of a candidate is ``estimators.ranking.observed_prior`` over the used targets:
   each target's values z-scored across its observed candidates, then averaged with the
   similarities as weights.
4. It is applied only when at least ``MIN_OBSERVED`` candidates have a prior and their values
   differ; otherwise the ranking is left exactly as without feedback (no ``prior`` column, no
   rescaled scores) and the reason is reported.
5. When applied, a candidate without any used observation is given the mean prior of the
   observed candidates (neither advantage nor penalty) and is listed as such.

The evidence (every target considered, its similarity, metric, values, whether it was used and
why not) is returned for the response's ``prior`` block.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from app.db.models import Dataset, Feedback
from app.db.session import scalars_in
from estimators.ranking import observed_prior

if TYPE_CHECKING:
    from app.services.context import Context

MIN_SIMILARITY = 0.5
MIN_PER_TARGET = 2
MIN_OBSERVED = 2
UNOBSERVED_POLICY = "neutral: the mean prior of the observed candidates (no advantage, no penalty)"


def _cosine(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    if a is None or b is None or a.shape != b.shape:
        return None
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / den) if den > 0 else None


def feedback_prior(ctx: Context, target: Dataset, sources: list[str], owner: str | None = None
                   ) -> tuple[dict[str, float] | None, dict[str, Any], dict[str, dict[str, float]]]:
    """``(prior {candidate: value} or None when not applied, evidence, this target's own
    observations {candidate: {metric: value}})``. With ``owner``, only that owner's feedback."""
    base: dict[str, Any] = {"applied": False, "min_similarity": MIN_SIMILARITY, "min_per_target": MIN_PER_TARGET,
                            "min_observed": MIN_OBSERVED}
    with ctx.Session() as s:
        q = select(Feedback) if owner is None else select(Feedback).where(Feedback.owner == owner)
        rows = sorted(scalars_in(s, q, Feedback.source, sources), key=lambda r: r.id)  # batches: order here
        if not rows:
            return None, dict(base, reason="no feedback recorded for these candidates", targets=[]), {}
        shas = {r.target_sha256 for r in rows} | {target.sha256}
        meta = {d.sha256: d for d in scalars_in(s, select(Dataset), Dataset.sha256, shas)}
        emb_keys = {sha: d.task_embedding_blob for sha, d in meta.items()}
    own: dict[str, dict[str, float]] = {}
    by_target: dict[str, dict[str, dict[str, list[float]]]] = {}
    for r in rows:
        v = r.value if r.higher_is_better else -r.value
        by_target.setdefault(r.target_sha256, {}).setdefault(r.metric, {}).setdefault(r.source, []).append(v)
        if r.target_sha256 == target.sha256:
            own.setdefault(r.source, {})[r.metric] = r.value

    def emb(sha: str) -> np.ndarray | None:
        key = emb_keys.get(sha)
        return None if not key else np.asarray(ctx.blobs.get_array(key), dtype=np.float64).reshape(-1)

    t_emb = emb(target.sha256)
    observed: dict[str, dict[str, float]] = {}
    similarity: dict[str, float] = {}
    evidence = []
    for sha, metrics in by_target.items():
        metric = max(sorted(metrics), key=lambda m: len(metrics[m]))  # the metric most candidates report
        values = {src: float(np.mean(v)) for src, v in metrics[metric].items()}
        sim = 1.0 if sha == target.sha256 else _cosine(t_emb, emb(sha))
        d = meta.get(sha)
        item: dict[str, Any] = {"target": d.id if d else None, "name": d.name if d else None, "sha256": sha,
                                "similarity": None if sim is None else round(sim, 6), "metric": metric,
                                "values": values, "used": False}
        if len(values) < MIN_PER_TARGET:
            item["why"] = (f"{len(values)} candidate observed with {metric}: a target needs results for at least "
                           f"{MIN_PER_TARGET} candidates to compare them")
        elif sim is None:
            item["why"] = "no task embedding to compare it with this target"
        elif sim < MIN_SIMILARITY:
            item["why"] = f"unrelated: similarity {sim:.3f} < {MIN_SIMILARITY}"
        else:
            item["used"] = True
            observed[sha], similarity[sha] = values, sim
        evidence.append(item)
    evidence.sort(key=lambda e: (not e["used"], -(e["similarity"] if e["similarity"] is not None else -2.0)))
    out = dict(base, targets=evidence)
    if not observed:
        return None, dict(out, reason="no related target has results for enough candidates"), own
    prior = {k: float(v) for k, v in observed_prior(observed, similarity).items()
             if k in sources and v is not None and math.isfinite(float(v))}
    if len(prior) < MIN_OBSERVED:
        return None, dict(out, reason=f"{len(prior)} candidate(s) with a prior; at least {MIN_OBSERVED} are "
                                      "needed for it to change the order"), own
    if max(prior.values()) - min(prior.values()) <= 1e-12:
        return None, dict(out, reason="every observed candidate has the same prior: it cannot change the order"), own
    unobserved = sorted(set(sources) - set(prior))
    return prior, dict(out, applied=True, reason=f"{len(prior)} candidates with observed results on "
                                                   f"{len(observed)} related target(s)",
                       observed={k: round(v, 6) for k, v in prior.items()}, unobserved=unobserved,
                       unobserved_policy=UNOBSERVED_POLICY if unobserved else None), own
