"""Bounded readers for uploaded datasets: every limit is checked while reading, before it costs.

One reader per format (``READERS``), each yielding plain columns or arrays that the shared
checks (``Budget``, ``check_cell``, ``_labels``) bound:

- CSV / TSV: streamed row by row with the ``csv`` module (strict UTF-8); the header's column
  count, each used cell's size and the row count are checked as rows arrive.
- JSONL: one JSON object per line, each line bounded before it is parsed.
- Parquet: the footer alone is parsed first (with small thrift limits), rows, columns and the
  row groups' uncompressed sizes are checked from it; row groups are then read one at a time
  (only the needed columns, string columns as dictionaries), and the materialised size is
  counted from the dictionary lengths before any value is decoded.
- NPZ: the zip's member headers (names, declared sizes, compression ratio) and each member's
  ``.npy`` header (dtype, shape) are checked before anything is inflated; object / pickled
  arrays are refused; each member inflates at most to its declared size.

A file whose bytes do not match its extension (a CSV named ``.npz``, a gzip named ``.csv``)
is refused with a message naming what it looks like. Every refusal is an ``Invalid`` (422) or
``TooLarge`` (413) with a message a person can act on.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from app.core.config import Limits
from app.core.config import limits as current_limits
from app.core.errors import Invalid, TooLarge

if TYPE_CHECKING:
    from app.core.config import Settings

TEXT_FORMATS = {"csv", "jsonl", "json", "ndjson", "parquet", "pq", "tsv"}
NPZ_KEY_PREFIXES = ("features_", "probs_")
TEXT_COLUMNS = ("text", "label", "text_pair")
#: characters refused in names and labels (C0 controls but tab, and DEL); texts refuse NUL only
CONTROL = {chr(c) for c in range(32) if c != 9} | {"\x7f"}
MAX_NPZ_MEMBERS = 64
MAX_ZIP_RATIO = 2000  # deflate tops out near 1030:1; more means a crafted archive

MAGIC = [
    (b"PAR1", "a Parquet file"),
    (b"PK\x03\x04", "a zip archive (NPZ)"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"BZh", "a bzip2-compressed file"),
    (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file"),
    (b"\x93NUMPY", "a single .npy array"),
    (b"\x80", "a Python pickle"),
]


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


# ---------------------------------------------------------------------- shared checks
class Budget:
    """Counts decompressed / materialised bytes against ``max_decompressed_bytes``."""

    def __init__(self, lim: Limits, what: str = "the file"):
        self.limit = lim.max_decompressed_bytes
        self.used = 0
        self.what = what

    def take(self, n: int, where: str = "") -> None:
        self.used += int(n)
        if self.used > self.limit:
            at = f" ({where})" if where else ""
            raise TooLarge(f"{self.what} expands to more than {self.limit} bytes{at}, "
                           "over the limit TRANSFERRANK_MAX_DECOMPRESSED_BYTES; upload fewer or shorter rows")


def check_rows(n: int, settings: Settings) -> None:
    if n == 0:
        raise Invalid("the file has no rows")
    if n < 2:
        raise Invalid("the file has 1 row; at least 2 labelled examples are needed")
    if n > settings.max_rows:
        raise Invalid(f"{n} rows exceed the limit of {settings.max_rows} (TRANSFERRANK_MAX_ROWS)")


def too_many_rows(settings: Settings, n: int | None = None) -> Invalid:
    if n is not None:
        return Invalid(f"{n} rows exceed the limit of {settings.max_rows} (TRANSFERRANK_MAX_ROWS)")
    return Invalid(f"the file has more than {settings.max_rows} rows, over the limit of {settings.max_rows} "
                   "(TRANSFERRANK_MAX_ROWS)")


def check_columns(n: int, lim: Limits, what: str = "columns") -> None:
    if n > lim.max_columns:
        raise Invalid(f"the file has {n} {what}, over the limit of {lim.max_columns} (TRANSFERRANK_MAX_COLUMNS); "
                      "a text dataset needs only 'text', 'label' (and optional 'text_pair')")


def check_cell(value: str, lim: Limits, column: str, row: int) -> str:
    if len(value) > lim.max_cell_bytes or (len(value) * 4 > lim.max_cell_bytes
                                           and len(value.encode("utf-8", "surrogatepass")) > lim.max_cell_bytes):
        raise Invalid(f"column '{column}' row {row} (0-based) has more than {lim.max_cell_bytes} bytes, over the "
                      "limit TRANSFERRANK_MAX_CELL_BYTES; shorten the text (encoders read only its start anyway)")
    if "\x00" in value:
        raise Invalid(f"column '{column}' row {row} (0-based) contains a NUL character; remove it")
    if column == "label" and any(ch in CONTROL for ch in value):
        raise Invalid(f"column 'label' row {row} (0-based) contains a control character; labels must be "
                      "printable text")
    return value


def _labels(raw: Iterable[Any], settings: Settings, what: str = "label") -> tuple[np.ndarray, list[str]]:
    names = [str(v).strip() for v in raw]
    if any(v == "" for v in names):
        empty = [i for i, v in enumerate(names) if v == ""][:5]
        raise Invalid(f"column '{what}' has empty values (rows {', '.join(map(str, empty))}, 0-based)")
    classes, idx = np.unique(np.asarray(names, dtype=object).astype(str), return_inverse=True)
    if len(classes) < 2:
        raise Invalid(f"the labels have only {len(classes)} distinct class ({classes[0] if len(classes) else '-'}); "
                      "a transferability score needs at least 2 classes")
    if len(classes) > settings.max_classes:
        raise Invalid(f"{len(classes)} classes exceed the limit of {settings.max_classes} "
                      "(TRANSFERRANK_MAX_CLASSES)")
    bad: list[str] = [str(c) for c in classes.tolist() if any(ch in CONTROL for ch in str(c))]
    if bad:
        raise Invalid(f"{len(bad)} label(s) contain control characters (e.g. {bad[0][:40]!r}); labels must be "
                      "printable text")
    return idx.astype(np.int64).reshape(-1), [str(c) for c in classes]


def _label_value(v: Any) -> Any:
    """Integer-valued floats count as integers (1.0 -> 1), as a spreadsheet export writes them."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


# ---------------------------------------------------------------------- format detection
def sniff(data: bytes) -> str | None:
    for magic, what in MAGIC:
        if data.startswith(magic):
            return what
    head = data[:4096]
    if head.lstrip()[:1] in (b"{", b"["):
        return "JSON text"
    if head and head.count(b"\x00") * 10 <= len(head):  # a stray NUL in text is reported by the reader
        try:
            head.decode("utf-8")
            return "plain text (CSV-like)"
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 4:  # not just a character cut at the 4096-byte boundary
                return "binary data"
            return "plain text (CSV-like)"
    return "binary data"


def detect_format(data: bytes, filename: str | None) -> str:
    ext = Path(filename or "").suffix.lower().lstrip(".")
    looks = sniff(data)
    if ext in TEXT_FORMATS or ext == "npz":
        fmt = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}.get(ext, ext)
    elif ext and ext not in ("txt", "dat", "bin"):
        raise Invalid(f"unsupported file type '.{ext}': upload CSV, TSV, JSONL, Parquet (columns text, label) "
                      "or NPZ (arrays features, labels)")
    elif data[:4] == b"PAR1":
        fmt = "parquet"
    elif data[:2] == b"PK":
        fmt = "npz"
    elif data[:1024].lstrip()[:1] == b"{":
        fmt = "jsonl"
    else:
        fmt = "csv"
    compressed = looks in ("a gzip-compressed file", "a bzip2-compressed file", "an xz-compressed file",
                           "a zstd-compressed file")
    if compressed and fmt != "parquet":
        raise Invalid(f"the file is {looks}; compressed uploads are not accepted: upload the uncompressed "
                      f"{fmt.upper()} (or Parquet, which compresses by itself)")
    if looks == "a Python pickle":
        raise Invalid("the file looks like a Python pickle; pickles are never loaded: upload CSV, JSONL, "
                      "Parquet or NPZ (np.savez without object arrays)")
    if fmt == "npz" and not data.startswith(b"PK"):
        hint = " (save it with np.savez, not np.save)" if looks == "a single .npy array" else ""
        raise Invalid(f"the file is named .npz but is not an NPZ archive: it looks like {looks}{hint}. "
                      "Upload an NPZ made by np.savez(path, features=X, labels=y), or give the file its "
                      "real extension")
    if fmt == "parquet" and not (data.startswith(b"PAR1") and data.endswith(b"PAR1")):
        raise Invalid(f"could not read the file as PARQUET: it does not start and end with the Parquet "
                      f"marker (it looks like {looks}); upload a complete Parquet file or give the file its "
                      "real extension")
    if fmt in ("csv", "tsv", "jsonl") and looks in ("a Parquet file", "a zip archive (NPZ)",
                                                    "a single .npy array", "binary data"):
        raise Invalid(f"the file is named .{ext or fmt} but it looks like {looks}; give the file its real "
                      "extension (.parquet, .npz) or upload UTF-8 text")
    return fmt


# ---------------------------------------------------------------------- text tables
def _text_columns(cols: list[str]) -> None:
    missing = [c for c in ("text", "label") if c not in cols]
    if missing:
        shown = ", ".join(c[:60] for c in cols[:20]) or "none"
        raise Invalid(f"missing column(s) {', '.join(missing)}; found columns: {shown}. "
                      "A text dataset needs columns 'text' and 'label' (optional 'text_pair')")


def _build_text(fmt: str, cols: list[str], values: dict[str, list[Any]], settings: Settings,
                lim: Limits) -> Parsed:
    n = len(values["text"])
    check_rows(n, settings)
    for name in ("text", "text_pair"):
        if name not in values:
            continue
        missing = [i for i, v in enumerate(values[name]) if v is None]
        if missing:
            raise Invalid(f"column '{name}' has {len(missing)} missing value(s) (rows {missing[:5]}, 0-based)")
        if name == "text":
            empty = [i for i, v in enumerate(values[name]) if not str(v).strip()]
            if empty:
                raise Invalid(f"column 'text' has {len(empty)} empty value(s) (rows {empty[:5]}, 0-based)")
    lab = values["label"]
    missing = [i for i, v in enumerate(lab) if v is None]
    if missing:
        raise Invalid(f"column 'label' has {len(missing)} missing value(s) (rows {missing[:5]}, 0-based)")
    labels, names = _labels([_label_value(v) for v in lab], settings)
    texts = [str(v) for v in values["text"]]
    pairs = [str(v) for v in values["text_pair"]] if "text_pair" in values else None
    shown = ["".join("?" if ch in CONTROL else ch for ch in c)[:200] for c in cols[:lim.max_columns]]
    return Parsed("text", fmt, labels, names, texts=texts, text_pairs=pairs, columns=shown)


def _decoded_lines(data: bytes, what: str) -> str:
    """UTF-8 text of ``data`` (BOM dropped) or a message naming the first bad byte."""
    try:
        return codecs.decode(data, "utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise Invalid(f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as "
                      f"UTF-8 {what} or upload Parquet") from None


def read_csv(data: bytes, fmt: str, settings: Settings, lim: Limits) -> Parsed:
    text = _decoded_lines(data, fmt.upper())
    if not text.strip():
        raise Invalid("the file is empty")
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise Invalid(f"the file contains a NUL character (line {line}); remove it (is it really a "
                      f"{fmt.upper()} file?)")
    budget = Budget(lim)
    budget.take(len(data))
    old = csv.field_size_limit(lim.max_cell_bytes + 1)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",", strict=True)
    try:
        try:
            header = next(reader)
        except StopIteration:
            raise Invalid("the file is empty") from None
        check_columns(len(header), lim)
        cols = [c.strip() for c in header]
        _text_columns(cols)
        idx = {c: cols.index(c) for c in TEXT_COLUMNS if c in cols}
        values: dict[str, list[Any]] = {c: [] for c in idx}
        width = len(cols)
        r = -1
        for row in reader:
            if not row:
                continue  # blank line
            r += 1
            if len(row) != width:
                raise Invalid(f"row {r} (0-based, after the header) has {len(row)} field(s) but the header has "
                              f"{width}; quote texts that contain '{',' if fmt == 'csv' else 'tab'}' or newlines")
            if r >= settings.max_rows:  # count the rest (bounded by the upload size), keep nothing
                raise too_many_rows(settings, r + 1 + sum(1 for rest in reader if rest))
            for c, i in idx.items():
                values[c].append(check_cell(row[i], lim, c, r))
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise Invalid(f"line {reader.line_num} has a field of more than {lim.max_cell_bytes} bytes, over "
                          "the limit TRANSFERRANK_MAX_CELL_BYTES; shorten the text") from None
        raise Invalid(f"could not read the file as {fmt.upper()}: {str(exc)[:200]} (line {reader.line_num})") from None
    finally:
        csv.field_size_limit(old)
    return _build_text(fmt, cols, values, settings, lim)


def read_jsonl(data: bytes, fmt: str, settings: Settings, lim: Limits) -> Parsed:
    text = _decoded_lines(data, "JSONL")
    if not text.strip():
        raise Invalid("the file is empty")
    line_cap = 4 * lim.max_cell_bytes + 4096
    values: dict[str, list[Any]] = {}
    cols: list[str] = []
    n = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if len(line) > line_cap:
            raise Invalid(f"line {lineno} has {len(line)} characters, over the limit of {line_cap} for one "
                          "record (TRANSFERRANK_MAX_CELL_BYTES); shorten its texts")
        try:
            obj = json.loads(line, parse_constant=lambda c: None)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise Invalid(f"line {lineno} is not valid JSON ({getattr(exc, 'msg', 'too deeply nested')}); "
                          "each line must be one object like {\"text\": \"...\", \"label\": \"...\"}") from None
        if not isinstance(obj, dict):
            raise Invalid(f"line {lineno} is a JSON {type(obj).__name__}, not an object; each line must be one "
                          "object like {\"text\": \"...\", \"label\": \"...\"}")
        check_columns(len(obj), lim, "keys in one record")
        if n == 0:
            cols = [str(k).strip() for k in obj]
            _text_columns(cols)
            values = {c: [] for c in TEXT_COLUMNS if c in cols}
        if n >= settings.max_rows:
            raise too_many_rows(settings, n + sum(1 for rest in text.splitlines()[lineno:] if rest.strip()))
        for c in values:
            v = obj.get(c)
            if isinstance(v, (dict, list)):
                raise Invalid(f"line {lineno}: '{c}' is a JSON {type(v).__name__}; it must be a string or number")
            if isinstance(v, str):
                check_cell(v, lim, c, n)
            elif v is not None and c == "text":
                v = str(v)
            values[c].append(v)
        n += 1
    if n == 0:
        raise Invalid("the file has no rows")
    return _build_text("jsonl", cols, values, settings, lim)


def read_parquet(data: bytes, fmt: str, settings: Settings, lim: Limits) -> Parsed:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    thrift = {"thrift_string_size_limit": max(1 << 20, min(len(data), 64 << 20)),
              "thrift_container_size_limit": max(10_000, 64 * lim.max_columns)}
    try:
        pf = pq.ParquetFile(io.BytesIO(data), **thrift)
        md = pf.metadata
        schema_names = list(pf.schema_arrow.names)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a broken footer
        if "size limit" in str(exc):
            raise Invalid("the Parquet footer is larger than allowed: the file has too many columns or row "
                          f"groups (limit {lim.max_columns} columns, TRANSFERRANK_MAX_COLUMNS)") from None
        raise Invalid("could not read the file as PARQUET: its footer is damaged or the file is truncated; "
                      f"export it again (the reader said: {_first_line(exc)})") from None
    check_columns(md.num_columns, lim)
    cols = [str(c).strip() for c in schema_names]
    _text_columns(cols)
    if md.num_rows > settings.max_rows:
        raise Invalid(f"{md.num_rows} rows exceed the limit of {settings.max_rows} (TRANSFERRANK_MAX_ROWS)")
    wanted = [schema_names[cols.index(c)] for c in TEXT_COLUMNS if c in cols]
    leaf = {md.schema.column(j).path: j for j in range(md.num_columns)}
    budget = Budget(lim)
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for w in wanted:
            if w not in leaf:
                continue
            size = rg.column(leaf[w]).total_uncompressed_size
            budget.take(size, f"row group {g}, from its metadata")
            if rg.num_rows and size / rg.num_rows > lim.max_cell_bytes + 64:
                raise Invalid(f"column '{cols[schema_names.index(w)]}' holds {size / rg.num_rows:.0f} bytes per row on "
                              f"average in row group {g}, over the limit of {lim.max_cell_bytes} per cell "
                              "(TRANSFERRANK_MAX_CELL_BYTES); shorten the texts")
    budget = Budget(lim)
    values: dict[str, list[Any]] = {c: [] for c in TEXT_COLUMNS if c in cols}
    seen = 0
    try:
        dict_pf = pq.ParquetFile(io.BytesIO(data), read_dictionary=wanted, **thrift)
        for g in range(md.num_row_groups):
            table = dict_pf.read_row_group(g, columns=wanted)
            seen += table.num_rows
            if seen > settings.max_rows:
                raise too_many_rows(settings)
            for w in wanted:
                c = cols[schema_names.index(w)]
                arr = table.column(w).combine_chunks()
                if pa.types.is_dictionary(arr.type):
                    dictionary, indices = arr.dictionary, arr.indices
                    if pa.types.is_string(dictionary.type) or pa.types.is_binary(dictionary.type) \
                            or pa.types.is_large_string(dictionary.type):
                        lengths = pc.binary_length(dictionary).to_numpy(zero_copy_only=False)
                        lengths = np.nan_to_num(lengths.astype(np.float64))
                        if lengths.size and lengths.max() > lim.max_cell_bytes:
                            raise Invalid(f"column '{c}' has a value of {int(lengths.max())} bytes, over the limit "
                                          f"of {lim.max_cell_bytes} (TRANSFERRANK_MAX_CELL_BYTES)")
                        ix = indices.fill_null(0).to_numpy(zero_copy_only=False)
                        budget.take(int(lengths[ix].sum()) if ix.size and lengths.size else 0,
                                    f"column '{c}' decoded")
                    plain = pa.string() if pa.types.is_binary(dictionary.type) else dictionary.type
                    arr = arr.cast(plain)
                elif pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_binary(arr.type):
                    lengths = pc.binary_length(arr).to_numpy(zero_copy_only=False)
                    lengths = np.nan_to_num(lengths.astype(np.float64))
                    if lengths.size and lengths.max() > lim.max_cell_bytes:
                        raise Invalid(f"column '{c}' has a value of {int(lengths.max())} bytes, over the limit "
                                      f"of {lim.max_cell_bytes} (TRANSFERRANK_MAX_CELL_BYTES)")
                    budget.take(int(lengths.sum()), f"column '{c}'")
                    if pa.types.is_binary(arr.type):
                        arr = arr.cast(pa.string())
                elif pa.types.is_nested(arr.type):
                    raise Invalid(f"column '{c}' holds {arr.type} values; it must hold strings or numbers")
                else:
                    budget.take(arr.nbytes, f"column '{c}'")
                vals = arr.to_pylist()
                base = len(values[c])
                for i, v in enumerate(vals):
                    if isinstance(v, str):
                        check_cell(v, lim, c, base + i)
                    elif v is not None and c == "text":
                        v = str(v)
                    if isinstance(v, float) and not np.isfinite(v) and c == "label":
                        raise Invalid(f"column 'label' row {base + i} is {v}; labels must be class names or integers")
                    vals[i] = v
                values[c].extend(vals)
    except (Invalid, TooLarge):
        raise
    except MemoryError:
        raise TooLarge("the Parquet file needs more memory to decode than the server can give; "
                       "upload fewer rows or shorter texts") from None
    except Exception as exc:
        raise Invalid("could not read the file as PARQUET: its data pages are damaged or use an unsupported "
                      f"encoding; export it again (the reader said: {_first_line(exc)})") from None
    return _build_text("parquet", cols, values, settings, lim)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:160] if text else type(exc).__name__)


# ---------------------------------------------------------------------- NPZ
def _npy_header(fh: IO[bytes], key: str) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fh, max_header_size=10_000)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(fh, max_header_size=10_000)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except ValueError as exc:
        raise Invalid(f"array '{key}' in the NPZ file has a malformed .npy header ({str(exc)[:120]})") from None
    if dtype.hasobject:
        raise Invalid(f"array '{key}' holds Python objects (a pickle); object arrays are never loaded: save "
                      "numeric features and integer or string labels")
    if dtype.kind not in "fiubUS" or dtype.fields is not None or dtype.subdtype is not None:
        raise Invalid(f"array '{key}' has dtype {dtype}; features must be numeric and labels integers or strings")
    if any((not isinstance(s, int)) or s < 0 for s in shape):
        raise Invalid(f"array '{key}' has an invalid shape {shape}")
    return shape, fortran, dtype


def read_npz(data: bytes, fmt: str, settings: Settings, lim: Limits) -> Parsed:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise Invalid(f"the file is not a readable NPZ (zip) archive ({str(exc)[:120]}); save it with "
                      "np.savez(path, features=X, labels=y)") from None
    if len(infos) > MAX_NPZ_MEMBERS:
        raise Invalid(f"the NPZ archive has {len(infos)} members, over the limit of {MAX_NPZ_MEMBERS}")
    budget = Budget(lim, "the NPZ archive")
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        if not name.endswith(".npy") or "/" in name or "\\" in name or name.startswith("."):
            raise Invalid(f"the NPZ archive holds {name[:80]!r}, which is not a top-level .npy array; only "
                          "arrays saved by np.savez are accepted (no folders, nested archives or other files)")
        key = name[:-4]
        if any(ch in CONTROL for ch in key) or key in members:
            raise Invalid(f"the NPZ archive has an invalid or repeated member name {key[:80]!r}")
        if info.flag_bits & 0x1:
            raise Invalid("the NPZ archive is encrypted; save it with np.savez, without a password")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise Invalid(f"array '{key}' uses an unsupported zip compression ({info.compress_type}); "
                          "use np.savez or np.savez_compressed")
        if info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO:
            raise TooLarge(f"array '{key}' inflates {info.file_size / info.compress_size:.0f}-fold (to "
                           f"{info.file_size} bytes); such a ratio means a crafted archive, not real data")
        budget.take(info.file_size, f"array '{key}', from the zip header")
        members[key] = info
    keys = list(members)
    missing = [k for k in ("features", "labels") if k not in members]
    if missing:
        raise Invalid(f"the NPZ file lacks array(s) {', '.join(missing)}; found {', '.join(keys) or 'none'}. "
                      "Save it with np.savez(path, features=X, labels=y)")
    unknown = [k for k in keys if k not in ("features", "labels") and not k.startswith(NPZ_KEY_PREFIXES)]
    if unknown:
        raise Invalid(f"unknown NPZ array(s) {', '.join(u[:60] for u in unknown[:10])}: allowed are features, "
                      "labels, features_<model> and probs_<model>")
    check_columns(len(keys), lim, "arrays")

    def load(key: str) -> np.ndarray:
        info = members[key]
        try:
            with zf.open(info) as fh:
                shape, fortran, dtype = _npy_header(fh, key)
                count = int(np.prod(shape, dtype=object))
                nbytes = count * dtype.itemsize
                if nbytes > info.file_size:
                    raise Invalid(f"array '{key}' declares shape {shape} ({nbytes} bytes) but its member holds "
                                  f"{info.file_size} bytes; the archive is damaged")
                if key != "labels":
                    if len(shape) != 2:
                        raise Invalid(f"{key} must be a 2-D array (n_examples, dim), got shape {shape}")
                    if shape[1] > lim.max_dim:
                        raise Invalid(f"{key} has {shape[1]} columns, over the limit of {lim.max_dim} "
                                      "(TRANSFERRANK_MAX_DIM)")
                if shape and shape[0] > settings.max_rows:
                    raise Invalid(f"{shape[0]} rows exceed the limit of {settings.max_rows} (TRANSFERRANK_MAX_ROWS)")
                raw = fh.read(nbytes)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise Invalid(f"array '{key}' in the NPZ file is damaged ({str(exc)[:120]})") from None
        if len(raw) != nbytes:
            raise Invalid(f"array '{key}' in the NPZ file is truncated ({len(raw)} of {nbytes} bytes)")
        a = np.frombuffer(raw, dtype=dtype, count=count)
        return a.reshape(shape, order="F" if fortran else "C")

    y = load("labels")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise Invalid(f"labels must be 1-D, got shape {y.shape}")
    check_rows(int(y.shape[0]), settings)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise Invalid("labels contain NaN or infinite values")
        if not np.all(y == np.round(y)):
            raise Invalid("labels must be class labels (integers or strings), not real values")
        y = y.astype(np.int64)
    if y.dtype.kind in "US" and y.dtype.itemsize > lim.max_cell_bytes:
        raise Invalid(f"labels are strings of up to {y.dtype.itemsize} bytes, over the limit of {lim.max_cell_bytes}")
    if y.dtype.kind == "S":
        try:
            y = np.char.decode(y, "utf-8")
        except UnicodeDecodeError:
            raise Invalid("labels are byte strings that are not UTF-8; save them as str or int") from None
    labels, names = _labels(y.tolist(), settings, "labels")
    n = labels.shape[0]

    def check(key: str) -> np.ndarray:
        a = load(key)
        if a.dtype.kind not in "fiub":
            raise Invalid(f"{key} must be numeric, got dtype {a.dtype}")
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

    features = check("features")
    extras = {k: check(k) for k in keys if k.startswith(NPZ_KEY_PREFIXES)}
    for k, P in extras.items():
        if k.startswith("probs_"):
            if P.min() < 0 or np.max(np.abs(P.sum(axis=1, dtype=np.float64) - 1)) > 1e-3:
                raise Invalid(f"{k} must hold class probabilities: non-negative rows summing to 1")
    return Parsed("features", "npz", labels, names, features=features, extras=extras, columns=sorted(keys))


Reader = Callable[[bytes, str, "Settings", Limits], Parsed]
#: one reader per format; a new format adds an entry (and, when it is binary, a MAGIC line)
READERS: dict[str, Reader] = {
    "csv": read_csv,
    "tsv": read_csv,
    "jsonl": read_jsonl,
    "parquet": read_parquet,
    "npz": read_npz,
}


def parse_upload(data: bytes, filename: str | None, settings: Settings, lim: Limits | None = None) -> Parsed:
    """Parse an upload with every limit checked while reading; raises ``Invalid`` / ``TooLarge``."""
    lim = lim or current_limits(settings)
    if len(data) > settings.max_upload_bytes:
        raise TooLarge(f"the upload has {len(data)} bytes, over the limit of {settings.max_upload_bytes} "
                       "(TRANSFERRANK_MAX_UPLOAD_BYTES)")
    if len(data) == 0:
        raise Invalid("the file is empty")
    fmt = detect_format(data, filename)
    try:
        return READERS[fmt](data, fmt, settings, lim)
    except MemoryError:
        raise TooLarge("the file needs more memory to read than the server can give; upload fewer rows, "
                       "fewer columns or shorter texts") from None
    except RecursionError:
        raise Invalid("the file is nested too deeply to read") from None
