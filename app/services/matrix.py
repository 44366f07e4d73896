"""The transfer matrix: cached source x target scores per estimator, with observed feedback
beside them, as JSON or CSV (long format, one row per source x target x estimator)."""
from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

import estimators
from app.core.errors import Invalid
from app.db.models import Dataset, Feedback, Score

if TYPE_CHECKING:
    from app.services.context import Context

CSV_COLUMNS = ["estimator", "source", "source_kind", "target", "target_name", "target_sha256", "encoder",
               "value", "higher_is_better", "n", "version", "observed_metric", "observed_value"]


def build(ctx: Context, estimator: str | None = None, target: str | None = None) -> dict[str, Any]:
    if estimator:
        try:
            estimators.info(estimator)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
    with ctx.Session() as s:
        datasets = {d.sha256: d for d in s.scalars(select(Dataset))}
        q = select(Score).order_by(Score.estimator, Score.source, Score.target_sha256)
        if estimator:
            q = q.where(Score.estimator == estimator)
        if target:
            wanted = s.get(Dataset, target)
            q = q.where(Score.target_sha256 == (wanted.sha256 if wanted else target))
        scores = list(s.scalars(q))
        feedback = list(s.scalars(select(Feedback).order_by(Feedback.id)))
    observed: dict[tuple[str, str], dict[str, Any]] = {}
    for f in feedback:
        observed[(f.source, f.target_sha256)] = {"metric": f.metric, "value": f.value,
                                                  "higher_is_better": f.higher_is_better}
    name_count: dict[str, int] = {}
    for row in datasets.values():
        name_count[row.name] = name_count.get(row.name, 0) + 1

    def label(sha: str) -> str:  # a target's column name: its dataset name, made unique
        d = datasets.get(sha)
        if d is None:
            return sha[:12]
        return d.name if name_count[d.name] == 1 else f"{d.name} ({d.id[:8]})"

    entries: list[dict[str, Any]] = []
    matrix: dict[str, dict[str, dict[str, float]]] = {}
    seen_pairs = set()
    for r in scores:
        d = datasets.get(r.target_sha256)
        obs = observed.get((r.source, r.target_sha256))
        hib = estimators.info(r.estimator).higher_is_better if r.estimator in estimators.names() else None
        entries.append({"estimator": r.estimator, "source": r.source, "source_kind": r.source_kind,
                        "target": d.id if d else None, "target_name": d.name if d else None,
                        "target_sha256": r.target_sha256, "encoder": r.encoder, "value": r.value,
                        "higher_is_better": hib, "n": r.n, "version": r.version,
                        "observed_metric": obs["metric"] if obs else None,
                        "observed_value": obs["value"] if obs else None})
        matrix.setdefault(r.estimator, {}).setdefault(r.source, {})[label(r.target_sha256)] = r.value
        seen_pairs.add((r.source, r.target_sha256))
    obs_rows = []
    for f in feedback:
        d = datasets.get(f.target_sha256)
        if target and d is not None and d.id != target and f.target_sha256 != target:
            continue
        obs_rows.append({"source": f.source, "target": f.target_id, "target_name": d.name if d else None,
                         "target_sha256": f.target_sha256, "metric": f.metric, "value": f.value,
                         "higher_is_better": f.higher_is_better})
        if (f.source, f.target_sha256) not in seen_pairs and not estimator:
            entries.append({"estimator": None, "source": f.source, "source_kind": None, "target": f.target_id,
                            "target_name": d.name if d else None, "target_sha256": f.target_sha256,
                            "encoder": None, "value": None, "higher_is_better": None, "n": None, "version": None,
                            "observed_metric": f.metric, "observed_value": f.value})
    return {"estimators": sorted(matrix), "sources": sorted({e["source"] for e in entries}),
            "targets": sorted({label(e["target_sha256"]) for e in entries}),
            "matrix": matrix, "entries": entries, "observed": obs_rows}


def to_csv(data: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for e in data["entries"]:
        w.writerow({k: ("" if e.get(k) is None else e.get(k)) for k in CSV_COLUMNS})
    return buf.getvalue()
