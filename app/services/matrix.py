"""The transfer matrix: cached source x target scores per estimator, with observed feedback
beside them and a combined score per (source, target) pair.

- ``build(ctx, estimator, target, source=...)``: filters take one name or a list (datasets by
  id or content sha256). Long format: one entry per source x target x estimator (the cache's
  rows), each with the pair's combined ``score``.
- Combined score of a pair: for each estimator, the direction-corrected values of every source
  scored on that target are turned into z-scores across those sources
  (``estimators.ranking.zscores``); the pair's score is the weighted mean of its z-scores
  (``estimators.ranking.DEFAULT_WEIGHTS``, ``esm_<name>`` as ``<name>``, others 1). It orders
  sources within a target, as a ranking does; it is not comparable across targets.
- ``page`` / ``wide`` / ``to_csv`` / ``to_parquet`` / ``heatmap_png`` shape the result.

Scores are cached by content (target sha256), so one row may serve several owners; a caller sees
a score only when the target is one of its own or the public datasets and the source one of its
own or the public sources and models, and only its own feedback: no other owner's names.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from sqlalchemy import func, select

import estimators
from app.core.errors import Invalid, NotFound, ServiceError
from app.db.models import Dataset, EncoderRow, Feedback, Score, SourceTask
from app.services.sources import hidden_names
from app.services.tenancy import can_read, visible
from estimators.ranking import DEFAULT_WEIGHTS, zscores

if TYPE_CHECKING:
    from app.services.context import Context

Names = str | Iterable[str] | None

CSV_COLUMNS = ["estimator", "source", "source_kind", "target", "target_name", "target_sha256", "encoder",
               "value", "higher_is_better", "n", "version", "observed_metric", "observed_value", "score"]
MAX_FILTER_VALUES = 1000
MAX_PNG_CELLS = 200 * 200


class NotAvailable(ServiceError):
    status_code = 501


def _names(value: Names) -> list[str]:
    if value is None:
        return []
    values = [value] if isinstance(value, str) else list(value)
    values = [v.strip() for v in values if v and v.strip()]
    if len(values) > MAX_FILTER_VALUES:
        raise Invalid(f"at most {MAX_FILTER_VALUES} values per filter, got {len(values)}")
    return list(dict.fromkeys(values))


def weight(estimator: str) -> float:
    base = estimator[4:] if estimator.startswith("esm_") else estimator
    return float(DEFAULT_WEIGHTS.get(base, 1.0))


def combined_scores(entries: list[dict[str, Any]]) -> dict[tuple[str, str], float | None]:
    """{(source, target_sha256): combined score} over the scored entries (see the module doc)."""
    groups: dict[tuple[str, str], dict[str, float]] = {}  # (target, estimator) -> {source: signed value}
    for e in entries:
        if e["estimator"] is None or e["value"] is None or not np.isfinite(e["value"]):
            continue
        sign = -1.0 if e["higher_is_better"] is False else 1.0
        groups.setdefault((e["target_sha256"], e["estimator"]), {})[e["source"]] = sign * float(e["value"])
    num: dict[tuple[str, str], float] = {}
    den: dict[tuple[str, str], float] = {}
    for (sha, est), values in groups.items():
        w = weight(est)
        names = list(values)
        z = zscores(np.fromiter(values.values(), dtype=np.float64, count=len(values)))
        for name, zi in zip(names, z):
            key = (name, sha)
            num[key] = num.get(key, 0.0) + w * float(zi)
            den[key] = den.get(key, 0.0) + w
    return {k: (round(num[k] / den[k], 6) if den[k] > 0 else None) for k in num}


# ---------------------------------------------------------------------- cache
#: matrices kept per context (each keyed by its filters, its reader and the catalogue's state)
CACHE_ENTRIES = 16
#: rendered answers kept per context (JSON bytes of a page of a matrix), each at most RENDER_MAX_BYTES
RENDER_ENTRIES = 64
RENDER_MAX_BYTES = 2 * 1024 * 1024

_caches: weakref.WeakKeyDictionary[Any, _MatrixCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


class _MatrixCache:
    """An LRU of built matrices with single flight: concurrent requests for the same key wait
    for one computation instead of each running it."""

    def __init__(self, size: int, max_bytes: int | None = None) -> None:
        self.size, self.max_bytes = size, max_bytes
        self.items: OrderedDict[str, Any] = OrderedDict()
        self.inflight: dict[str, Future[Any]] = {}
        self.lock = threading.Lock()

    def get_or_build(self, key: str, build_fn: Callable[[], Any]) -> Any:
        with self.lock:
            hit = self.items.get(key)
            if hit is not None:
                self.items.move_to_end(key)
                return hit
            fut = self.inflight.get(key)
            owner = fut is None
            if fut is None:
                fut = self.inflight[key] = Future()
        if not owner:
            return fut.result()
        try:
            data = build_fn()
        except BaseException as exc:
            with self.lock:
                self.inflight.pop(key, None)
            fut.set_exception(exc)
            raise
        with self.lock:
            self.inflight.pop(key, None)
            if self.max_bytes is None or len(data) <= self.max_bytes:
                self.items[key] = data
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        fut.set_result(data)
        return data


_renders: weakref.WeakKeyDictionary[Any, _MatrixCache] = weakref.WeakKeyDictionary()


def _cache(ctx: Any, renders: bool = False) -> _MatrixCache:
    with _caches_lock:
        where = _renders if renders else _caches
        c = where.get(ctx)
        if c is None:
            c = where[ctx] = (_MatrixCache(RENDER_ENTRIES, RENDER_MAX_BYTES) if renders
                              else _MatrixCache(CACHE_ENTRIES))
        return c


def catalogue_state(ctx: Context) -> list[Any]:
    """What a matrix reads, in one aggregate query: (row count, largest id) of the scores (insert
    only), datasets, feedback, source tasks and models -- any change to them changes it."""
    q = select(select(func.count(Score.id)).scalar_subquery(), select(func.max(Score.id)).scalar_subquery(),
               select(func.count(Dataset.id)).scalar_subquery(), select(func.max(Dataset.id)).scalar_subquery(),
               select(func.count(Feedback.id)).scalar_subquery(), select(func.max(Feedback.id)).scalar_subquery(),
               select(func.count(SourceTask.id)).scalar_subquery(),
               select(func.max(SourceTask.id)).scalar_subquery(),
               select(func.count(EncoderRow.name)).scalar_subquery(),
               select(func.max(EncoderRow.name)).scalar_subquery())
    with ctx.Session() as s:
        return list(s.execute(q).one())


def build(ctx: Context, estimator: Names = None, target: Names = None, owner: str | None = None, *,
          source: Names = None) -> dict[str, Any]:
    """The matrix (see the module docstring), from a cache keyed by the filters, the reader and
    ``catalogue_state``: while a job writes new scores the matrix is rebuilt once per change, by
    one request, however many ask. The result is shared: callers must not modify it."""
    ests, targets, sources = _names(estimator), _names(target), _names(source)
    key = json.dumps([ests, targets, sources, owner, catalogue_state(ctx)], default=str)
    return cast(dict[str, Any], _cache(ctx).get_or_build(hashlib.sha256(key.encode()).hexdigest(),
                                                         lambda: _build(ctx, ests, targets, owner, sources)))


def rendered(ctx: Context, estimator: Names, target: Names, owner: str | None, source: Names,
             view: list[Any], render: Callable[[dict[str, Any]], bytes]) -> bytes:
    """``render(build(...))`` -- an answer's bytes for one view of the matrix (layout, page,
    format: ``view``) -- cached like the matrix itself (same state key; answers larger than
    ``RENDER_MAX_BYTES`` are not kept), so a repeated read costs one state query."""
    ests, targets, sources = _names(estimator), _names(target), _names(source)
    key = json.dumps([ests, targets, sources, owner, catalogue_state(ctx), view], default=str)
    return cast(bytes, _cache(ctx, renders=True).get_or_build(
        hashlib.sha256(key.encode()).hexdigest(), lambda: render(build(ctx, ests, targets, owner, source=sources))))


def _build(ctx: Context, ests: list[str], targets: list[str], owner: str | None,
           sources: list[str]) -> dict[str, Any]:
    for name in ests:
        try:
            estimators.info(name)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
    hidden = hidden_names(ctx, owner)
    with ctx.Session() as s:
        datasets: dict[str, Dataset] = {}
        for found in s.scalars(select(Dataset).where(visible(Dataset.owner, owner))
                               .order_by((Dataset.owner == owner).asc() if owner else Dataset.id)):
            datasets[found.sha256] = found  # the caller's own row wins over a public one with the same content
        q = select(Score).order_by(Score.estimator, Score.source, Score.target_sha256, Score.id)
        if ests:
            q = q.where(Score.estimator.in_(ests))
        else:  # the rankings' cached bootstrap draws (estimator "bootstrap:<name>") are not transfer scores
            q = q.where(Score.estimator.not_like("bootstrap:%"))
        shas: list[str] = []
        for t in targets:
            wanted = s.get(Dataset, t)
            if wanted is not None and can_read(wanted.owner, owner):
                shas.append(wanted.sha256)
            elif t in datasets or owner is None and wanted is None and len(t) == 64:  # a content hash
                shas.append(t)
            else:
                raise NotFound(f"no dataset with id {t!r}; list them with GET /v1/datasets")
        if shas:
            q = q.where(Score.target_sha256.in_(shas))
        if sources:
            q = q.where(Score.source.in_(sources))
        scores = [r for r in s.scalars(q)
                  if owner is None or (r.target_sha256 in datasets and r.source not in hidden)]
        fq = select(Feedback).order_by(Feedback.id)
        if owner is not None:
            fq = fq.where(Feedback.owner == owner)
        if shas:
            fq = fq.where(Feedback.target_sha256.in_(shas))
        if sources:
            fq = fq.where(Feedback.source.in_(sources))
        feedback = list(s.scalars(fq))
    observed: dict[tuple[str, str], dict[str, Any]] = {}
    for f in feedback:
        observed[(f.source, f.target_sha256)] = {"metric": f.metric, "value": f.value,
                                                  "higher_is_better": f.higher_is_better}
    name_count: dict[str, int] = {}
    for ds_ in datasets.values():
        name_count[ds_.name] = name_count.get(ds_.name, 0) + 1

    def label(sha: str) -> str:  # a target's column name: its dataset name, made unique
        d = datasets.get(sha)
        if d is None:
            return sha[:12]
        return d.name if name_count[d.name] == 1 else f"{d.name} ({d.id[:8]})"

    known = set(estimators.names())
    latest: dict[tuple[str, str, str], Score] = {}  # several params/versions: the newest row per cell
    for r in scores:
        latest[(r.estimator, r.source, r.target_sha256)] = r
    entries: list[dict[str, Any]] = []
    matrix: dict[str, dict[str, dict[str, float]]] = {}
    seen_pairs: set[tuple[str, str]] = set()
    for r in latest.values():
        d: Dataset | None = datasets.get(r.target_sha256)
        obs = observed.get((r.source, r.target_sha256))
        hib = estimators.info(r.estimator).higher_is_better if r.estimator in known else None
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
        obs_rows.append({"source": f.source, "target": f.target_id, "target_name": d.name if d else None,
                         "target_sha256": f.target_sha256, "metric": f.metric, "value": f.value,
                         "higher_is_better": f.higher_is_better})
        if (f.source, f.target_sha256) not in seen_pairs and not ests:
            seen_pairs.add((f.source, f.target_sha256))
            entries.append({"estimator": None, "source": f.source, "source_kind": None, "target": f.target_id,
                            "target_name": d.name if d else None, "target_sha256": f.target_sha256,
                            "encoder": None, "value": None, "higher_is_better": None, "n": None, "version": None,
                            "observed_metric": f.metric, "observed_value": f.value})
    combined = combined_scores(entries)
    scores_by_target: dict[str, dict[str, float | None]] = {}
    for e in entries:
        e["score"] = combined.get((e["source"], e["target_sha256"]))
        if e["estimator"] is not None:
            scores_by_target.setdefault(label(e["target_sha256"]), {})[e["source"]] = e["score"]
    entries.sort(key=lambda e: (label(e["target_sha256"]), -(e["score"] if e["score"] is not None else -np.inf),
                                e["source"], e["estimator"] or ""))
    for e in entries:
        e["target_label"] = label(e["target_sha256"])
    return {"estimators": sorted(matrix), "sources": sorted({e["source"] for e in entries}),
            "targets": sorted({e["target_label"] for e in entries}),
            "matrix": matrix, "scores": scores_by_target, "entries": entries, "observed": obs_rows,
            "total": len(entries),
            "combine": {"method": "per target and estimator, z-scores of the direction-corrected values across "
                                  "the sources scored on that target; weighted mean per (source, target)",
                        "weights": {e: weight(e) for e in sorted(matrix)}}}


def page(data: dict[str, Any], limit: int | None, offset: int = 0) -> dict[str, Any]:
    """Long layout, entries ``[offset, offset + limit)`` (ordered by target, then score)."""
    out = dict(data)
    end = None if limit is None else offset + limit
    out["entries"] = data["entries"][offset:end]
    out.update(layout="long", limit=limit, offset=offset)
    return out


def wide(data: dict[str, Any], value: str = "score", limit: int | None = None, offset: int = 0) -> dict[str, Any]:
    """Pivot: one row per source (best mean rank across targets first), one column per target,
    cells = the combined score or one estimator's raw value (``value``)."""
    if value != "score" and value not in data["matrix"]:
        raise Invalid(f"value must be 'score' or one of the matrix's estimators ({', '.join(data['estimators'])}); "
                      f"got {value!r}")
    cells = data["scores"] if value == "score" else _by_target(data["matrix"][value])
    targets = sorted(cells)
    sources = sorted({src for col in cells.values() for src in col})
    M = np.full((len(sources), len(targets)), np.nan)
    row = {s: i for i, s in enumerate(sources)}
    for j, t in enumerate(targets):
        for src, v in cells[t].items():
            if v is not None:
                M[row[src], j] = v
    key = -M if value == "score" or estimators.info(value).higher_is_better else M
    ranks = np.full_like(M, np.nan)  # rank within each target (1 = best), missing cells left out
    for j in range(len(targets)):
        ok = np.isfinite(M[:, j])
        ranks[ok, j] = np.argsort(np.argsort(key[ok, j], kind="stable"), kind="stable") + 1.0
    mean_rank = [float(np.nanmean(r)) if np.isfinite(r).any() else np.inf for r in ranks]
    order = sorted(range(len(sources)), key=lambda i: (mean_rank[i], sources[i]))
    end = None if limit is None else offset + limit
    order = order[offset:end]
    return {"layout": "wide", "value": value, "index": [sources[i] for i in order], "columns": targets,
            "data": [[None if np.isnan(M[i, j]) else float(M[i, j]) for j in range(len(targets))] for i in order],
            "total": len(sources), "limit": limit, "offset": offset, "estimators": data["estimators"],
            "combine": data["combine"]}


def _by_target(per_source: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for src, cols in per_source.items():
        for t, v in cols.items():
            out.setdefault(t, {})[src] = v
    return out


def _long_rows(data: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    return CSV_COLUMNS, [[e.get(k) for k in CSV_COLUMNS] for e in data["entries"]]


def _wide_rows(data: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    return ["source", *data["columns"]], [[src, *vals] for src, vals in zip(data["index"], data["data"])]


def _rows(data: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    return _wide_rows(data) if data.get("layout") == "wide" else _long_rows(data)


def to_csv(data: dict[str, Any]) -> str:
    header, rows = _rows(data)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([["" if v is None else v for v in r] for r in rows])
    return buf.getvalue()


def to_parquet(data: dict[str, Any]) -> bytes:
    import pandas as pd

    header, rows = _rows(data)
    buf = io.BytesIO()
    frame = pd.DataFrame(rows, columns=header)
    frame.columns = [str(c) for c in frame.columns]
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def heatmap_png(data: dict[str, Any], title: str | None = None) -> bytes:
    """The wide matrix (``wide(...)``) as a PNG heatmap: sources down, targets across, cells
    annotated when the grid is small; missing cells blank."""
    if not data["index"] or not data["columns"]:
        raise NotFound("no cached scores match these filters; rank a target first (POST /v1/rankings)")
    if len(data["index"]) * len(data["columns"]) > MAX_PNG_CELLS:
        raise Invalid(f"{len(data['index'])} x {len(data['columns'])} cells are too many to draw; "
                      "narrow it with target=/source= or limit=")
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        raise NotAvailable("the heatmap needs matplotlib on the server: pip install matplotlib") from None
    M = np.array([[np.nan if v is None else v for v in row] for row in data["data"]], dtype=np.float64)
    n_rows, n_cols = M.shape
    fig = Figure(figsize=(min(2.0 + 0.9 * n_cols, 30), min(1.5 + 0.35 * n_rows, 40)), dpi=100)
    ax = fig.add_subplot()
    finite = M[np.isfinite(M)]
    lim = float(np.max(np.abs(finite))) if finite.size else 1.0
    cmap = "RdYlGn" if data["value"] == "score" else "viridis"
    vmin, vmax = (-lim, lim) if data["value"] == "score" else (None, None)
    im = ax.imshow(np.ma.masked_invalid(M), aspect="auto", cmap=cmap, interpolation="nearest", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(n_cols), labels=data["columns"], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n_rows), labels=data["index"], fontsize=8)
    if n_rows * n_cols <= 400:
        for i, j in zip(*np.nonzero(np.isfinite(M))):
            ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="combined score (z)" if data["value"] == "score" else data["value"])
    ax.set_title(title or ("transfer matrix: combined score" if data["value"] == "score"
                           else f"transfer matrix: {data['value']}"), fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
