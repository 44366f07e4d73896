"""The transfer matrix: cached source x target scores per estimator, with observed feedback
beside them, as JSON or CSV (long format, one row per source x target x estimator).

Scores are cached by content (target sha256), so one row may serve several owners; a caller sees
a score only when the target is one of its own or the public datasets and the source one of its
own or the public sources and models, and only its own feedback: no other owner's names."""
from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

import estimators
from app.core.errors import Invalid, NotFound
from app.db.models import Dataset, Feedback, Score
from app.services.sources import hidden_names
from app.services.tenancy import can_read, visible

if TYPE_CHECKING:
    from app.services.context import Context

CSV_COLUMNS = ["estimator", "source", "source_kind", "target", "target_name", "target_sha256", "encoder",
               "value", "higher_is_better", "n", "version", "observed_metric", "observed_value"]


def build(ctx: Context, estimator: str | None = None, target: str | None = None,
          owner: str | None = None) -> dict[str, Any]:
    if estimator:
        try:
            estimators.info(estimator)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
    hidden = hidden_names(ctx, owner)
    with ctx.Session() as s:
        datasets: dict[str, Dataset] = {}
        for found in s.scalars(select(Dataset).where(visible(Dataset.owner, owner))
                               .order_by((Dataset.owner == owner).asc() if owner else Dataset.id)):
            datasets[found.sha256] = found  # the caller's own row wins over a public one with the same content
        q = select(Score).order_by(Score.estimator, Score.source, Score.target_sha256)
        if estimator:
            q = q.where(Score.estimator == estimator)
        else:  # the rankings' cached bootstrap draws (estimator "bootstrap:<name>") are not transfer scores
            q = q.where(Score.estimator.not_like("bootstrap:%"))
        if target:
            wanted = s.get(Dataset, target)
            if wanted is not None and can_read(wanted.owner, owner):
                sha = wanted.sha256
            elif target in datasets or owner is None:  # a content hash
                sha = target
            else:
                raise NotFound(f"no dataset with id {target!r}; list them with GET /v1/datasets")
            q = q.where(Score.target_sha256 == sha)
        fq = select(Feedback).order_by(Feedback.id)
        if owner is not None:
            fq = fq.where(Feedback.owner == owner)
        scores = [r for r in s.scalars(q)
                  if owner is None or (r.target_sha256 in datasets and r.source not in hidden)]
        feedback = list(s.scalars(fq))
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
