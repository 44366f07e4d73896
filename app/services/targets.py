"""Target types of a dataset: ``classification``, ``regression`` or ``multilabel``.

``interpret(values, task_type)`` turns raw label values into the stored target:

* ``classification`` -> int64 (n,) class indices + the class names (as before);
* ``regression`` -> float64 (n,) or (n, k) (several target columns ``label_<name>``, or a list
  of numbers per row);
* ``multilabel`` -> uint8 (n, L) 0/1 matrix + the label vocabulary; a row's labels are a list
  (JSONL / Parquet), a JSON list string ``'["a", "b"]'`` or a comma-separated string ``"a,b"``.

Inference without ``task_type`` happens only when it is unambiguous: integer-valued or
non-numeric strings -> classification; real lists per row -> multilabel. Anything else -- real
numbers such as ``0.5, 1.7, 2.2`` (regression or classes?), strings with commas or JSON lists
(``"a,b"``: one class or two labels?) -- is refused with a 422 that names the reason and asks for
``task_type``. A float is never silently turned into a class.

Tables (CSV / TSV / JSONL / Parquet, column ``text`` + ``label``) and NPZ (``features`` +
``labels``) of the classification type are read by ``app.services.datasets``; the other types are
read here and stored through the same ``store_parsed``.
"""
from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from app.core.config import limits
from app.core.errors import Invalid
from app.services import ingest
from app.services.datasets import Parsed

if TYPE_CHECKING:
    from app.core.config import Settings

TASK_TYPES = ("classification", "regression", "multilabel")


def check_task_type(task_type: str | None) -> str | None:
    if task_type is None or str(task_type).strip() == "":
        return None
    t = str(task_type).strip().lower()
    if t not in TASK_TYPES:
        raise Invalid(f"task_type must be one of {', '.join(TASK_TYPES)}, got {task_type!r}")
    return t


def _is_listlike(v: object) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


def _as_float(v: object) -> float | None:
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    try:
        return float(str(v).strip())
    except ValueError:
        return None


def _examples(values: list[Any], k: int = 3) -> str:
    return ", ".join(repr(v) if not isinstance(v, str) else v for v in values[:k])


def infer(values: list[Any]) -> str:
    """The task type the values make unambiguous; ``Invalid`` (asking for task_type) otherwise."""
    if any(_is_listlike(v) for v in values):
        if all(_is_listlike(v) for v in values):
            return "multilabel"
        raise Invalid("some labels are lists and some are not: set task_type=multilabel (a list of labels per "
                      "row) or use one label per row")
    floats = [_as_float(v) for v in values]
    if all(f is not None for f in floats):
        arr = np.asarray(floats, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise Invalid("the labels contain NaN or infinite values")
        frac = arr[np.mod(arr, 1) != 0]
        if frac.size:
            raise Invalid(f"the labels look like real numbers ({_examples(list(frac))}): set task_type=regression to "
                          "rank for float targets, or task_type=classification to treat each distinct value as a "
                          "class")
        return "classification"
    strs = [str(v) for v in values]
    listy = [s for s in strs if "," in s or s.strip().startswith("[")]
    if listy:
        raise Invalid(f"some labels hold several values ({_examples(listy)}): set task_type=multilabel to read them "
                      "as label lists (comma-separated or JSON), or task_type=classification to keep each string "
                      "as one class")
    return "classification"


def _multilabel_rows(values: list[Any]) -> list[list[str]]:
    rows = []
    for i, v in enumerate(values):
        if _is_listlike(v):
            items = list(v)
        elif v is None or (isinstance(v, float) and np.isnan(v)):
            items = []
        else:
            s = str(v).strip()
            if s.startswith("["):
                try:
                    items = json.loads(s)
                except ValueError:
                    raise Invalid(f"row {i}: label {s[:80]!r} starts like a JSON list but is not one") from None
                if not isinstance(items, list):
                    raise Invalid(f"row {i}: label {s[:80]!r} is not a list")
            else:
                items = [p for p in s.split(",")]
        rows.append([str(x).strip() for x in items if str(x).strip()])
    return rows


def multilabel_matrix(values: list[Any], settings: Settings) -> tuple[np.ndarray, list[str]]:
    rows = _multilabel_rows(values)
    vocab = sorted({x for r in rows for x in r})
    if len(vocab) < 1:
        raise Invalid("the multilabel targets have no labels at all")
    if len(vocab) > settings.max_classes:
        raise Invalid(f"{len(vocab)} distinct labels exceed the limit of {settings.max_classes} "
                      "(TRANSFERRANK_MAX_CLASSES)")
    index = {v: j for j, v in enumerate(vocab)}
    Y = np.zeros((len(rows), len(vocab)), dtype=np.uint8)
    r = np.fromiter((i for i, row in enumerate(rows) for _ in row), dtype=np.int64)
    c = np.fromiter((index[x] for row in rows for x in row), dtype=np.int64)
    Y[r, c] = 1
    if np.all(Y.sum(axis=0) == len(rows)):
        raise Invalid("every row carries every label: nothing to predict")
    return Y, vocab


def regression_matrix(columns: dict[str, list[Any]]) -> tuple[np.ndarray, list[str]]:
    """``{name: values}`` (one or several target columns; a column may hold a list per row)."""
    names, cols = [], []
    for name, values in columns.items():
        if values and all(_is_listlike(v) for v in values):
            try:
                block = np.asarray([np.asarray(v, dtype=np.float64) for v in values], dtype=np.float64)
            except ValueError:
                raise Invalid(f"column '{name}': the target lists must all have the same length") from None
            if block.ndim != 2:
                raise Invalid(f"column '{name}': the target lists must all have the same length")
            cols.append(block)
            names += [f"{name}[{j}]" for j in range(block.shape[1])]
            continue
        floats = [_as_float(v) for v in values]
        bad = [i for i, f in enumerate(floats) if f is None]
        if bad:
            raise Invalid(f"task_type=regression needs numeric targets; column '{name}' row {bad[0]} holds "
                          f"{str(values[bad[0]])[:40]!r} ({len(bad)} non-numeric value(s))")
        cols.append(np.asarray(floats, dtype=np.float64)[:, None])
        names.append(name)
    Y = np.hstack(cols)
    if not np.all(np.isfinite(Y)):
        rows = np.flatnonzero(~np.isfinite(Y).all(axis=1))[:5].tolist()
        raise Invalid(f"the regression targets contain NaN or infinite values (rows {rows}, 0-based)")
    if np.any(Y.std(axis=0) == 0):
        raise Invalid("a regression target is constant: nothing to predict")
    return (Y[:, 0] if Y.shape[1] == 1 else Y), names


def interpret(columns: dict[str, list[Any]], task_type: str | None, settings: Settings) -> tuple[str,
              np.ndarray, list[str]]:
    """-> (task_type, targets, names). ``columns``: the label column(s), ``{name: values}``."""
    task_type = check_task_type(task_type)
    first = next(iter(columns.values()))
    if task_type is None:
        if len(columns) > 1:
            raise Invalid(f"several label columns ({', '.join(columns)}): set task_type=regression for several "
                          "float targets")
        task_type = infer(first)
    if task_type == "regression":
        Y, names = regression_matrix(columns)
        return task_type, Y, names
    if len(columns) > 1:
        raise Invalid(f"several label columns ({', '.join(columns)}) are taken for task_type=regression only")
    if task_type == "multilabel":
        Y, names = multilabel_matrix(first, settings)
        return task_type, Y, names
    return task_type, np.asarray([], dtype=np.int64), []  # classification: the caller's reader


def target_hash(h: Any, task_type: str, Y: np.ndarray, names: list[str]) -> None:
    h.update(f"task_type:{task_type}\0".encode())
    h.update(json.dumps(names, ensure_ascii=False).encode())
    a = np.ascontiguousarray(Y)
    h.update(f"{a.dtype.str}:{a.shape}\0".encode())
    h.update(a.tobytes())


@dataclass
class TargetParsed(Parsed):
    """``Parsed`` with a target type, a modality and (images) the decoded sizes."""

    task_type: str = "regression"
    modality: str = "text"
    image_sizes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return 0 if self.task_type == "regression" else len(self.label_names)

    def sha256(self) -> str:
        h = hashlib.sha256()
        h.update(f"transferrank-{self.kind}-{self.task_type}-v1\0".encode())
        if self.kind == "text":
            h.update(json.dumps({"text": self.texts, "text_pair": self.text_pairs}, ensure_ascii=False,
                                separators=(",", ":")).encode())
        else:
            arrays = dict(self.extras)
            if self.features is not None:
                arrays["features"] = self.features
            for key in sorted(arrays):
                a = np.ascontiguousarray(arrays[key])
                h.update(f"{key}:{a.dtype.str}:{a.shape}\0".encode())
                h.update(a.tobytes())
        target_hash(h, self.task_type, self.labels, self.label_names)
        return h.hexdigest()


def parsed_class() -> type[TargetParsed]:
    """The ``Parsed`` of a dataset with a target type (kept for callers that import it lazily)."""
    return TargetParsed


def label_columns(cols: list[str]) -> list[str]:
    """``label`` and/or ``label_<name>`` columns (several only for regression)."""
    out = [c for c in cols if c == "label"] + sorted(c for c in cols if c.startswith("label_"))
    return out


def _bounded_parquet(data: bytes, settings: Settings) -> Any:
    """The Parquet table as a DataFrame, its decoded size counted before it is materialised:
    string columns are read dictionary-encoded and their decoded bytes summed from the dictionary
    (a few repeated 1 MB strings cannot inflate to gigabytes), under the same limits as the
    classification readers (rows, columns, cell size, ``TRANSFERRANK_MAX_DECOMPRESSED_BYTES``)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    lim = limits(settings)
    try:
        pf = pq.ParquetFile(io.BytesIO(data), thrift_string_size_limit=max(1 << 20, min(len(data), 64 << 20)),
                            thrift_container_size_limit=max(10_000, 64 * lim.max_columns))
        md = pf.metadata
        ingest.check_columns(md.num_columns, lim)
        if md.num_rows > settings.max_rows:
            raise ingest.too_many_rows(settings, md.num_rows)
        strings = [f.name for f in pf.schema_arrow if pa.types.is_string(f.type) or pa.types.is_binary(f.type)
                   or pa.types.is_large_string(f.type)]
        table = pq.ParquetFile(io.BytesIO(data), read_dictionary=strings).read()
    except Invalid:
        raise
    except Exception as exc:  # noqa: BLE001 -- pyarrow's errors for a damaged file
        raise Invalid(f"could not read the file as PARQUET ({ingest._first_line(exc)})") from None
    budget = ingest.Budget(lim)
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if pa.types.is_dictionary(col.type):
            lengths = pc.binary_length(col.dictionary).fill_null(0)
            longest = pc.max(lengths).as_py() or 0
            if longest > lim.max_cell_bytes:
                raise Invalid(f"column {name!r} has a value of {longest} bytes, over the limit of "
                              f"{lim.max_cell_bytes} per cell (TRANSFERRANK_MAX_CELL_BYTES)")
            budget.take(int(pc.sum(pc.take(lengths, col.indices.fill_null(0))).as_py() or 0), f"column {name!r}")
        else:
            budget.take(col.nbytes, f"column {name!r}")
    return table.to_pandas()


def _read_raw(data: bytes, fmt: str, settings: Settings) -> Any:
    """The table as a DataFrame for the regression / multi-label readers, within the upload limits
    (Parquet: ``_bounded_parquet``; text formats are already bounded by the upload size, and
    their column count is checked on the header)."""
    import pandas as pd

    if fmt == "parquet":
        df = _bounded_parquet(data, settings)
    else:
        if fmt in ("csv", "tsv"):
            header = data[: data.find(b"\n") if b"\n" in data else len(data)]
            ingest.check_columns(header.count(b"\t" if fmt == "tsv" else b",") + 1, limits(settings))
            df = pd.read_csv(io.BytesIO(data), sep="\t" if fmt == "tsv" else ",", dtype=str,
                             keep_default_na=False, na_values=[], encoding="utf-8")
        else:
            df = pd.read_json(io.BytesIO(data), lines=True, dtype=False)
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _all_lists(data: bytes, fmt: str, settings: Settings) -> bool:
    try:
        values = _read_raw(data, fmt, settings)["label"].tolist()
    except Exception:  # noqa: BLE001 -- the reader reports what is wrong with the file
        return False
    return bool(values) and all(_is_listlike(v) for v in values)


def parse_table(data: bytes, fmt: str, settings: Settings, task_type: str | None,
                classification_reader: Callable[..., Parsed]) -> Parsed:
    """A text table with a declared or inferred target type.

    Classification (declared, or inferred) is read by ``classification_reader(data, fmt,
    settings)`` (the datasets module's reader), whose distinct label strings are then checked
    for ambiguity (``infer``) when no ``task_type`` was given; a JSONL / Parquet label column
    holding real lists is read as multi-label. Regression and multi-label tables are read here."""
    task_type = check_task_type(task_type)
    if task_type is None and fmt in ("jsonl", "parquet") and _all_lists(data, fmt, settings):
        task_type = "multilabel"  # real lists per row: unambiguous
    if task_type in (None, "classification"):
        try:
            parsed = classification_reader(data, fmt, settings)
        except Invalid as exc:
            if task_type is None and "classes exceed" in exc.detail:  # many distinct floats: say why
                try:
                    infer(_read_raw(data, fmt, settings)["label"].tolist())
                except Invalid:
                    raise
                except Exception:
                    pass
            raise
        if task_type == "classification":
            return parsed
        names = list(parsed.label_names)
        if fmt in ("jsonl", "parquet") and any(n.startswith("[") for n in names):
            values = _read_raw(data, fmt, settings)["label"].tolist()
            if all(_is_listlike(v) for v in values):
                task_type = "multilabel"  # real lists per row: unambiguous
            else:
                infer(values)
        if task_type is None:
            infer(names)  # 422 for real numbers or "a,b" strings, asking for task_type
            return parsed
    try:
        df = _read_raw(data, fmt, settings)
    except Exception:  # the classification reader gives the detailed message
        return classification_reader(data, fmt, settings)
    lcols = label_columns(list(df.columns))
    if task_type != "regression":  # several label columns are regression targets only
        lcols = [c for c in lcols if c == "label"]
    if "text" not in df.columns or not lcols:
        return classification_reader(data, fmt, settings)  # names the missing columns
    n = len(df)
    if n < 2:
        raise Invalid(f"the file has {n} row(s); at least 2 labelled examples are needed")
    if n > settings.max_rows:
        raise Invalid(f"{n} rows exceed the limit of {settings.max_rows} (TRANSFERRANK_MAX_ROWS)")
    texts = df["text"]
    if texts.isna().any():
        raise Invalid(f"column 'text' has {int(texts.isna().sum())} missing value(s)")
    texts = texts.astype(str).tolist()
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise Invalid(f"column 'text' has {len(empty)} empty value(s) (rows {empty[:5]}, 0-based)")
    pairs = df["text_pair"].astype(str).tolist() if "text_pair" in df.columns else None
    ttype, Y, names = interpret({c: df[c].tolist() for c in lcols}, task_type, settings)
    TP = parsed_class()
    return TP("text", fmt, Y, names, texts=texts, text_pairs=pairs, columns=list(df.columns), task_type=ttype)


def parse_npz(data: bytes, settings: Settings, task_type: str | None, classification_reader: Callable[...,
              Parsed]) -> Parsed:
    """NPZ ``features`` + ``labels``: classification through ``classification_reader``; regression
    (float (n,) or (n, k)) and multilabel ((n, L) 0/1) targets when ``task_type`` says so."""
    task_type = check_task_type(task_type)
    if task_type in (None, "classification"):
        return classification_reader(data, settings)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise Invalid(f"could not read the NPZ file (object arrays are not accepted): {exc}") from None
    if "labels" not in arrays:
        raise Invalid("the NPZ file lacks array 'labels'")
    y = arrays["labels"]
    if y.ndim not in (1, 2) or y.shape[0] < 2:
        raise Invalid(f"labels must be (n,) or (n, k) with n >= 2, got shape {y.shape}")
    if y.dtype.kind not in "fiub":
        raise Invalid(f"{task_type} labels must be numeric, got dtype {y.dtype}")
    if task_type == "regression":
        Y = np.asarray(y, dtype=np.float64)
        if not np.all(np.isfinite(Y)):
            raise Invalid("the regression targets contain NaN or infinite values")
        if np.any(Y.reshape(Y.shape[0], -1).std(axis=0) == 0):
            raise Invalid("a regression target is constant: nothing to predict")
        names = ["label"] if Y.ndim == 1 else [f"label[{j}]" for j in range(Y.shape[1])]
    else:
        if y.ndim != 2 or not np.isin(y, (0, 1)).all():
            raise Invalid("multilabel labels must be an (n, L) matrix of 0/1 values")
        Y = y.astype(np.uint8)
        names = [str(j) for j in range(Y.shape[1])]
    # features and the features_<m> / probs_<m> extras: validated by the classification reader
    dummy = dict(arrays, labels=np.arange(y.shape[0]) % 2)
    buf = io.BytesIO()
    np.savez(buf, **dummy)
    base = classification_reader(buf.getvalue(), settings)
    TP = parsed_class()
    return TP("features", "npz", Y, names, features=base.features, extras=base.extras, columns=base.columns,
              task_type=task_type, modality="features")
