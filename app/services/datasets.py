"""Datasets: parse uploads (CSV / JSONL / Parquet text+label, NPZ features+labels), dedupe by
content hash, store arrays as blobs and the row in SQL — all or nothing."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.errors import Conflict, Invalid, TooLarge
from app.core.logging import get_logger
from app.db.models import DEFAULT_OWNER, Dataset, FeatureSet, Feedback, Ranking, Score, SourceTask, iso
from app.db.session import rowcount
from app.services.tenancy import check_read, check_write

if TYPE_CHECKING:
    from app.core.config import Settings
    from app.services.context import Context

log = get_logger("datasets")

TEXT_FORMATS = {"csv", "jsonl", "json", "ndjson", "parquet", "pq", "tsv"}
NPZ_KEY_PREFIXES = ("features_", "probs_")
SEP = " [SEP] "


@dataclass
class Parsed:
    kind: str  # "text" | "features"
    fmt: str
    labels: np.ndarray  # int64 0..C-1
    label_names: list[str]
    texts: list[str] | None = None
    text_pairs: list[str] | None = None
    features: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    def sha256(self) -> str:
        h = hashlib.sha256()
        if self.kind == "text":
            h.update(b"transferrank-text-v1\0")
            h.update(json.dumps({"text": self.texts, "text_pair": self.text_pairs,
                                 "label": [self.label_names[i] for i in self.labels.tolist()]},
                                ensure_ascii=False, separators=(",", ":")).encode())
        else:
            h.update(b"transferrank-features-v1\0")
            arrays = {"features": self.features, "labels": np.asarray(
                [self.label_names[i] for i in self.labels.tolist()])} | self.extras
            for key in sorted(arrays):
                a = np.ascontiguousarray(arrays[key])
                h.update(f"{key}:{a.dtype.str}:{a.shape}\0".encode())
                h.update(a.tobytes())
        return h.hexdigest()


# ---------------------------------------------------------------------- parsing
def _detect_format(data: bytes, filename: str | None) -> str:
    ext = Path(filename or "").suffix.lower().lstrip(".")
    if ext in TEXT_FORMATS or ext == "npz":
        return {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}.get(ext, ext)
    if ext and ext not in ("txt", "dat", "bin"):
        raise Invalid(f"unsupported file type '.{ext}': upload CSV, TSV, JSONL, Parquet (columns text, label) "
                      "or NPZ (arrays features, labels)")
    if data[:4] == b"PAR1":
        return "parquet"
    if data[:2] == b"PK":
        return "npz"
    if data[:1024].lstrip()[:1] == b"{":
        return "jsonl"
    return "csv"


def _labels(raw: Any, settings: Settings, what: str = "label") -> tuple[np.ndarray, list[str]]:
    names = [str(v).strip() for v in raw]
    if any(v == "" for v in names):
        bad = [i for i, v in enumerate(names) if v == ""][:5]
        raise Invalid(f"column '{what}' has empty values (rows {', '.join(map(str, bad))}, 0-based)")
    classes, idx = np.unique(np.asarray(names, dtype=object).astype(str), return_inverse=True)
    if len(classes) < 2:
        raise Invalid(f"the labels have only {len(classes)} distinct class ({classes[0] if len(classes) else '-'}); "
                      "a transferability score needs at least 2 classes")
    if len(classes) > settings.max_classes:
        raise Invalid(f"{len(classes)} classes exceed the limit of {settings.max_classes} "
                      "(TRANSFERRANK_MAX_CLASSES)")
    return idx.astype(np.int64).reshape(-1), [str(c) for c in classes]


def _check_rows(n: int, settings: Settings) -> None:
    if n == 0:
        raise Invalid("the file has no rows")
    if n < 2:
        raise Invalid("the file has 1 row; at least 2 labelled examples are needed")
    if n > settings.max_rows:
        raise Invalid(f"{n} rows exceed the limit of {settings.max_rows} (TRANSFERRANK_MAX_ROWS)")


def _parse_table(data: bytes, fmt: str, settings: Settings) -> Parsed:
    import pandas as pd

    if not data.strip():
        raise Invalid("the file is empty")
    try:
        if fmt in ("csv", "tsv"):
            df = pd.read_csv(io.BytesIO(data), sep="\t" if fmt == "tsv" else ",", dtype=str,
                             keep_default_na=False, na_values=[], encoding="utf-8")
        elif fmt == "jsonl":
            df = pd.read_json(io.BytesIO(data), lines=True, dtype=False)
        else:
            df = pd.read_parquet(io.BytesIO(data))
    except UnicodeDecodeError:
        raise Invalid("the file is not UTF-8 text; save it as UTF-8 CSV/JSONL or upload Parquet") from None
    except Exception as exc:  # pandas raises many types for malformed files
        raise Invalid(f"could not read the file as {fmt.upper()}: {str(exc).splitlines()[0][:300]}") from None
    df.columns = [str(c).strip() for c in df.columns]
    cols = list(df.columns)
    missing = [c for c in ("text", "label") if c not in cols]
    if missing:
        raise Invalid(f"missing column(s) {', '.join(missing)}; found columns: {', '.join(cols[:20]) or 'none'}. "
                      "A text dataset needs columns 'text' and 'label' (optional 'text_pair')")
    _check_rows(len(df), settings)

    def text_col(name: str) -> list[str]:
        col = df[name]
        nulls = col.isna().to_numpy()
        if nulls.any():
            rows = np.flatnonzero(nulls)[:5].tolist()
            raise Invalid(f"column '{name}' has {int(nulls.sum())} missing value(s) (rows {rows}, 0-based)")
        values: list[str] = col.astype(str).tolist()
        empty = [i for i, v in enumerate(values) if not v.strip()]
        if empty and name == "text":
            raise Invalid(f"column 'text' has {len(empty)} empty value(s) (rows {empty[:5]}, 0-based)")
        return values

    texts = text_col("text")
    pairs = text_col("text_pair") if "text_pair" in cols else None
    lab = df["label"]
    if lab.isna().any():
        rows = np.flatnonzero(lab.isna().to_numpy())[:5].tolist()
        raise Invalid(f"column 'label' has {int(lab.isna().sum())} missing value(s) (rows {rows}, 0-based)")
    if lab.dtype.kind == "f" and np.all(np.mod(lab.to_numpy(), 1) == 0):
        lab = lab.astype(np.int64)
    labels, names = _labels(lab.tolist(), settings)
    return Parsed("text", fmt, labels, names, texts=texts, text_pairs=pairs, columns=cols)


def _parse_npz(data: bytes, settings: Settings) -> Parsed:
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
        arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise Invalid(f"could not read the NPZ file (object arrays are not accepted): {exc}") from None
    missing = [k for k in ("features", "labels") if k not in arrays]
    if missing:
        raise Invalid(f"the NPZ file lacks array(s) {', '.join(missing)}; found {', '.join(arrays) or 'none'}. "
                      "Save it with np.savez(path, features=X, labels=y)")
    unknown = [k for k in arrays if k not in ("features", "labels") and not k.startswith(NPZ_KEY_PREFIXES)]
    if unknown:
        raise Invalid(f"unknown NPZ array(s) {', '.join(unknown)}: allowed are features, labels, "
                      "features_<model> and probs_<model>")
    y = arrays["labels"]
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise Invalid(f"labels must be 1-D, got shape {y.shape}")
    _check_rows(int(y.shape[0]), settings)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise Invalid("labels contain NaN or infinite values")
        if not np.all(y == np.round(y)):
            raise Invalid("labels must be class labels (integers or strings), not real values")
        y = y.astype(np.int64)
    if y.dtype.kind not in "iuUSb":
        raise Invalid(f"labels have unsupported dtype {y.dtype}")
    labels, names = _labels(y.tolist(), settings, "labels")
    n = labels.shape[0]

    def check(key: str, a: np.ndarray) -> np.ndarray:
        if a.dtype.kind not in "fiub":
            raise Invalid(f"{key} must be numeric, got dtype {a.dtype}")
        if a.ndim != 2:
            raise Invalid(f"{key} must be a 2-D array (n_examples, dim), got shape {a.shape}")
        if a.shape[0] != n:
            raise Invalid(f"{key} has {a.shape[0]} rows but labels has {n}")
        if a.shape[1] < 1:
            raise Invalid(f"{key} has no columns")
        a = a.astype(np.float32)
        bad = ~np.isfinite(a)
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            raise Invalid(f"{key} contains {int(bad.sum())} NaN or infinite value(s) in {rows.size} row(s) "
                          f"(first rows {rows[:5].tolist()}); clean or impute them first")
        return a

    features = check("features", arrays["features"])
    extras = {k: check(k, v) for k, v in arrays.items() if k.startswith(NPZ_KEY_PREFIXES)}
    for k, P in extras.items():
        if k.startswith("probs_"):
            if P.min() < 0 or np.max(np.abs(P.sum(axis=1) - 1)) > 1e-3:
                raise Invalid(f"{k} must hold class probabilities: non-negative rows summing to 1")
    return Parsed("features", "npz", labels, names, features=features, extras=extras, columns=sorted(arrays))


def parse_upload(data: bytes, filename: str | None, settings: Settings) -> Parsed:
    if len(data) > settings.max_upload_bytes:
        raise TooLarge(f"the upload has {len(data)} bytes, over the limit of {settings.max_upload_bytes} "
                       "(TRANSFERRANK_MAX_UPLOAD_BYTES)")
    if len(data) == 0:
        raise Invalid("the file is empty")
    fmt = _detect_format(data, filename)
    if fmt == "npz":
        return _parse_npz(data, settings)
    return _parse_table(data, fmt, settings)


# ---------------------------------------------------------------------- storage
def dataset_dict(ds: Dataset) -> dict[str, Any]:
    return {
        "id": ds.id,
        "name": ds.name,
        "owner": ds.owner,
        "sha256": ds.sha256,
        "n_examples": ds.n_examples,
        "n_classes": ds.n_classes,
        "kind": ds.kind,
        "classes": list(ds.label_names or [])[:50],
        "format": (ds.meta or {}).get("format"),
        "feature_sets": sorted({fs.encoder for fs in ds.feature_sets}) if ds.feature_sets is not None else [],
        "created_at": iso(ds.created_at),
    }


def _default_name(filename: str | None, sha: str) -> str:
    stem = Path(filename or "").stem
    return stem[:200] if stem else f"dataset-{sha[:8]}"


def store_parsed(ctx: Context, parsed: Parsed, name: str | None, filename: str | None = None,
                 meta: dict[str, Any] | None = None, *, owner: str = DEFAULT_OWNER) -> tuple[Dataset, bool]:
    """Write blobs, then the SQL row in one transaction; on any failure remove the new blobs.

    Returns ``(dataset, created)``; ``created`` is False when ``owner`` already stores the same
    content. Another owner's copy is never returned (its name and id stay private); only its
    content-derived task embedding is reused.
    """
    sha = parsed.sha256()
    with ctx.Session() as s:
        existing = s.scalar(select(Dataset).where(Dataset.owner == owner, Dataset.sha256 == sha))
        if existing is not None:
            _ = existing.feature_sets
            return existing, False
        task_embedding = s.scalar(select(Dataset.task_embedding_blob).where(
            Dataset.sha256 == sha, Dataset.task_embedding_blob.is_not(None)).limit(1))
    with ctx.blobs.writer() as w:
        texts_blob = None
        if parsed.kind == "text":
            texts = parsed.texts if parsed.text_pairs is None else [
                f"{a}{SEP}{b}" for a, b in zip(parsed.texts or [], parsed.text_pairs)]
            texts_blob = w.put_json(texts)
        labels_blob = w.put_array(parsed.labels)
        features_blob = w.put_array(parsed.features) if parsed.features is not None else None
        extra = {k: w.put_array(v) for k, v in parsed.extras.items()}
        ds = Dataset(
            owner=owner, task_embedding_blob=task_embedding,
            name=(name or "").strip()[:255] or _default_name(filename, sha), sha256=sha, kind=parsed.kind,
            n_examples=parsed.n, n_classes=parsed.n_classes, label_names=parsed.label_names,
            texts_blob=texts_blob, labels_blob=labels_blob, features_blob=features_blob, extra_blobs=extra,
            meta={"format": parsed.fmt, "columns": parsed.columns,
                  "text_pair": parsed.text_pairs is not None,
                  "dim": int(parsed.features.shape[1]) if parsed.features is not None else None,
                  **(meta or {})},
        )
        try:
            with ctx.Session.begin() as s:
                s.add(ds)
        except IntegrityError:  # the same content was stored concurrently: keep theirs
            w.keep_all()  # blobs are shared by content with the winner
            with ctx.Session() as s:
                existing = s.scalar(select(Dataset).where(Dataset.owner == owner, Dataset.sha256 == sha))
                if existing is None:
                    raise
                _ = existing.feature_sets
                return existing, False
    with ctx.Session() as s:
        stored = s.get(Dataset, ds.id)
        assert stored is not None  # committed just above
        ds = stored
        _ = ds.feature_sets
    log.info("dataset %s stored (%s, n=%d, C=%d, sha256=%s)", ds.id, ds.kind, ds.n_examples, ds.n_classes, sha[:12])
    return ds, True


def create_from_upload(ctx: Context, data: bytes, filename: str | None, name: str | None, *,
                       owner: str = DEFAULT_OWNER) -> tuple[Dataset, bool]:
    parsed = parse_upload(data, filename, ctx.settings)
    return store_parsed(ctx, parsed, name, filename, owner=owner)


def get(ctx: Context, dataset_id: str, owner: str | None = None) -> Dataset:
    """The dataset, if ``owner`` may read it (its own or public); ``owner=None``: internal, any."""
    with ctx.Session() as s:
        ds = check_read(s.get(Dataset, dataset_id), owner,
                        f"no dataset with id {dataset_id!r}; list them with GET /v1/datasets")
        _ = ds.feature_sets
        return ds


def list_all(ctx: Context, limit: int = 100, offset: int = 0, owner: str | None = None) -> list[Dataset]:
    """``owner``'s datasets, newest first (public ones are reached through the sources)."""
    with ctx.Session() as s:
        q = select(Dataset)
        if owner is not None:
            q = q.where(Dataset.owner == owner)
        rows = list(s.scalars(q.order_by(Dataset.created_at.desc(), Dataset.id).limit(limit).offset(offset)))
        for r in rows:
            _ = r.feature_sets
        return rows


def labels(ctx: Context, ds: Dataset) -> np.ndarray:
    return ctx.blobs.get_array(ds.labels_blob)


def texts(ctx: Context, ds: Dataset) -> list[str]:
    if ds.texts_blob is None:
        raise Invalid(f"dataset {ds.id} ({ds.name}) holds features, not texts")
    stored: list[str] = ctx.blobs.get_json(ds.texts_blob)
    return stored


def referenced_blobs(session: Session) -> set[str]:
    keys: set[str] = set()
    for row in session.execute(select(Dataset.texts_blob, Dataset.labels_blob, Dataset.features_blob,
                                      Dataset.extra_blobs, Dataset.task_embedding_blob)):
        keys.update(k for k in row[:3] if k)
        keys.update((row[3] or {}).values())
        if row[4]:
            keys.add(row[4])
    keys.update(session.scalars(select(FeatureSet.blob)))
    keys.update(k for k in session.scalars(select(SourceTask.esm_blob)) if k)
    return keys


def delete_dataset(ctx: Context, dataset_id: str, owner: str | None = None, admin: bool = False) -> dict[str, Any]:
    """Delete a dataset with its rankings and feedback. Cached scores and features of its content
    stay while another owner stores the same content (they are keyed by content, not by row)."""
    with ctx.Session.begin() as s:
        ds = check_write(s.get(Dataset, dataset_id), owner, admin, f"no dataset with id {dataset_id!r}",
                         f"dataset {dataset_id}")
        src = s.scalar(select(SourceTask).where(SourceTask.dataset_id == dataset_id))
        if src is not None:
            raise Conflict(f"dataset {dataset_id} backs source task {src.name!r}; delete the source first "
                           f"(DELETE /v1/sources/{src.name})")
        keys = {k for k in (ds.texts_blob, ds.labels_blob, ds.features_blob, ds.task_embedding_blob) if k}
        keys.update((ds.extra_blobs or {}).values())
        twin = s.scalar(select(Dataset.id).where(Dataset.sha256 == ds.sha256, Dataset.id != ds.id).limit(1))
        if twin is None:
            keys.update(fs.blob for fs in ds.feature_sets)
            n_scores = rowcount(s.execute(delete(Score).where(Score.target_sha256 == ds.sha256)))
        else:  # another row stores the same content: its feature and score caches stay
            n_scores = 0
            s.execute(update(FeatureSet).where(FeatureSet.dataset_id == dataset_id).values(dataset_id=twin)
                      .execution_options(synchronize_session=False))
            s.expire(ds, ["feature_sets"])
        s.execute(delete(Feedback).where(Feedback.target_id == dataset_id))
        s.execute(delete(Ranking).where(Ranking.target_id == dataset_id))
        s.delete(ds)
    with ctx.Session() as s:
        still = referenced_blobs(s)
    removed = [k for k in keys if k not in still and ctx.blobs.delete(k)]
    log.info("dataset %s deleted (%d blobs, %d cached scores)", dataset_id, len(removed), n_scores)
    return {"id": dataset_id, "deleted": True, "blobs_removed": len(removed), "scores_removed": n_scores}
