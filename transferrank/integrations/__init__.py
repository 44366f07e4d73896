"""Bridges from a ranking to the tools a pipeline already uses. Each module imports its library
lazily and is an optional extra: ``pip install transferrank[optuna]`` / ``transferrank[mlflow]``.

- ``transferrank.integrations.optuna``: enqueue trials for the top-k sources in ranking order,
  a ``CategoricalDistribution`` over sources ordered by the ranking, a callback that reports
  each finished trial back as feedback.
- ``transferrank.integrations.mlflow``: log a ranking as params + a table artifact; report a
  fine-tuning run back as feedback.
- ``transferrank.integrations.feedback``: ``FeedbackReporter``, the callback both use.
"""
from __future__ import annotations


def ranking_rows(ranking) -> list[dict]:
    """The ranking's rows (best first) from a ``Ranking``, a fitted ``TransferSelector``, a
    REST body (``{"ranking": [...]}``) or the list of dicts itself."""
    if hasattr(ranking, "ranking_"):
        rows = ranking.ranking_
    elif hasattr(ranking, "ranking") and not isinstance(ranking, dict):
        rows = ranking.ranking
    elif isinstance(ranking, dict):
        rows = ranking.get("ranking", [])
    else:
        rows = ranking
    rows = list(rows or [])
    if not rows or not all(isinstance(r, dict) and "source" in r for r in rows):
        raise ValueError("expected a ranking: a Ranking, a fitted TransferSelector, or a non-empty list of "
                         "dicts with 'source'")
    return sorted(rows, key=lambda r: r.get("rank", 0))


def ranked_sources(ranking, top_k: int | None = None) -> list[str]:
    """Candidate names, best first (the first ``top_k``)."""
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    names = [r["source"] for r in ranking_rows(ranking)]
    return names[:top_k] if top_k is not None else names
