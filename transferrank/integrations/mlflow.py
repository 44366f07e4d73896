"""MLflow: log a ranking to a run (params + a table artifact), and report a finished
fine-tuning run back to TransferRank as feedback.

    from transferrank.integrations.mlflow import log_ranking, report_run
    with mlflow.start_run():
        log_ranking(ranking)                      # params transferrank.best, .rank_1.., table artifact
    report_run(client, run_id, target=ds, metric="accuracy", source_param="source")
"""
from __future__ import annotations

import csv
import io

from transferrank.integrations import ranking_rows
from transferrank.integrations.feedback import FeedbackReporter

MAX_PARAM_RANKS = 10


def _mlflow():
    try:
        import mlflow
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("this integration needs MLflow: pip install 'transferrank[mlflow]'") from None
    return mlflow


def _table(rows: list[dict]) -> dict[str, list]:
    ests = sorted({e for r in rows for e in (r.get("scores") or {})})
    table: dict[str, list] = {"rank": [], "source": [], "score": []}
    table.update({e: [] for e in ests})
    for r in rows:
        table["rank"].append(r.get("rank"))
        table["source"].append(r["source"])
        table["score"].append(r.get("score"))
        for e in ests:
            table[e].append((r.get("scores") or {}).get(e))
    return table


def log_ranking(ranking, prefix: str = "transferrank", artifact_dir: str = "transferrank",
                top_k: int = MAX_PARAM_RANKS) -> dict:
    """Log ``ranking`` to the active MLflow run: params ``<prefix>.best``,
    ``<prefix>.candidates``, ``<prefix>.estimators``, ``<prefix>.target``,
    ``<prefix>.rank_<i>`` (top ``top_k``); metrics ``<prefix>.score.<source>``; the whole table
    as ``<artifact_dir>/ranking.json`` (``mlflow.log_table``) and ``ranking.csv``. Returns the
    params logged."""
    mlflow = _mlflow()
    rows = ranking_rows(ranking)
    raw = getattr(ranking, "raw", None) or (ranking if isinstance(ranking, dict) else {})
    target = raw.get("target")
    ests = getattr(ranking, "estimators", None) or getattr(ranking, "estimators_", None) or raw.get("estimators") \
        or sorted({e for r in rows for e in (r.get("scores") or {})})
    params = {f"{prefix}.best": rows[0]["source"], f"{prefix}.n_candidates": len(rows),
              f"{prefix}.estimators": ",".join(ests)}
    candidates = getattr(ranking, "candidates", None) or raw.get("candidates")
    if isinstance(candidates, str):
        params[f"{prefix}.candidates"] = candidates
    if target:
        params[f"{prefix}.target"] = target["id"] if isinstance(target, dict) else str(target)
    for r in rows[:top_k]:
        params[f"{prefix}.rank_{r.get('rank')}"] = r["source"]
    mlflow.log_params(params)
    metrics = {f"{prefix}.score.{_metric_key(r['source'])}": float(r["score"]) for r in rows
               if r.get("score") is not None}
    if metrics:
        mlflow.log_metrics(metrics)
    table = _table(rows)
    mlflow.log_table(data=table, artifact_file=f"{artifact_dir}/ranking.json")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(table))
    w.writerows(zip(*table.values()))
    mlflow.log_text(buf.getvalue(), f"{artifact_dir}/ranking.csv")
    return params


def _metric_key(name: str) -> str:
    """MLflow metric names allow alphanumerics, _ - . space / only."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in name)


def report_run(client, run, target, metric: str = "accuracy", source_param: str = "source",
               higher_is_better: bool = True, tracking_client=None):
    """Report a finished MLflow run (a ``Run`` or run id) as feedback: the run's param
    ``source_param`` names the source, its metric ``metric`` is the value. Returns the stored
    ``Feedback``; raises ``ValueError`` when the run lacks either."""
    mlflow = _mlflow()
    tc = tracking_client or mlflow.MlflowClient()
    run = tc.get_run(run) if isinstance(run, str) else run
    source = run.data.params.get(source_param)
    if source is None:
        raise ValueError(f"run {run.info.run_id} has no param {source_param!r}; params: {sorted(run.data.params)}")
    if metric not in run.data.metrics:
        raise ValueError(f"run {run.info.run_id} has no metric {metric!r}; metrics: {sorted(run.data.metrics)}")
    reporter = FeedbackReporter(client, target, metric, higher_is_better)
    return reporter(source, run.data.metrics[metric], note=f"mlflow run {run.info.run_id}")
