"""Hostile-input corpus and the attack benchmark: every attack must answer 4xx with a message,
never 5xx, and the server's peak RSS must stay under 2 GB while it refuses them.

``corpus()`` builds the attacks (decompression and size bombs of each upload format, huge and
odd numbers, NUL and control characters in every string field and path id, path-like names,
pickles, oversized JSON bodies); ``tests/api/test_hostile.py`` runs the same corpus in-process on
SQLite and PostgreSQL. This script runs it against a real ``transferrank serve`` process per
database, resetting and reading the server's peak RSS (``/proc/<pid>/clear_refs``, ``VmHWM``)
around each attack, and writes ``bench/results/attacks.md``::

    PYTHONPATH=. python -m bench.attacks [--database-url postgresql+psycopg://...] [--out bench/results/attacks.md]
"""
from __future__ import annotations

import argparse
import functools
import gzip
import io
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MB = 1 << 20


@dataclass
class Attack:
    """One hostile request. ``path`` may contain ``{dataset}`` / ``{source}`` (filled by the runner)."""

    name: str
    method: str
    path: str
    files: Callable[[], dict] | None = None  # multipart: {"file": (filename, bytes)}
    data: dict | None = None  # multipart form fields
    json_body: object | None = None  # sent with json=
    raw_body: Callable[[], bytes] | None = None  # sent as-is with content-type application/json
    params: dict | None = None
    expect: tuple[int, ...] = (413, 422)
    note: str = ""
    tags: set[str] = field(default_factory=set)


# ---------------------------------------------------------------------- bombs
def texts_csv(n: int = 30) -> bytes:
    rows = ["text,label"] + [f"sentence number {i} about topic {i % 3},c{i % 3}" for i in range(n)]
    return ("\n".join(rows) + "\n").encode()


def parquet_repeated_string(rows: int = 2000, cell: int = MB) -> bytes:
    """The reported bomb: ``rows`` copies of one ``cell``-byte string, dictionary-encoded (~50 KB)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)), pa.array(["x" * cell]))
    table = pa.table({"text": text, "label": pa.array([str(i % 2) for i in range(rows)])})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", use_dictionary=True)
    return buf.getvalue()


def parquet_plain_cells(rows: int = 40, cell: int = 2 * MB) -> bytes:
    """Large distinct-looking cells without a dictionary, zstd-compressed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"text": [f"{i:06d}" + "y" * cell for i in range(rows)],
                      "label": [str(i % 2) for i in range(rows)]})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", use_dictionary=False)
    return buf.getvalue()


def parquet_many_columns(n_cols: int = 20_000) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"text": ["a b", "c d"], "label": ["0", "1"]}
    cols.update({f"c{i}": [0, 1] for i in range(n_cols)})
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf, compression="zstd")
    return buf.getvalue()


def parquet_many_rows(rows: int = 5_000_000) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"text": pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)),
                                                             pa.array(["same text"])),
                      "label": pa.array(np.arange(rows) % 2)})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


class _ZeroRunDeflater:
    """A raw-deflate compressor for ``_zip_member``: each write ends on a full flush (byte-aligned,
    no back-references), so the deflated form of a zero chunk is computed once and repeated —
    an 8 GB member is built in seconds instead of deflating 8 GB. The stream is valid deflate."""

    def __init__(self):
        self._zero: dict[int, bytes] = {}

    def compress(self, data: bytes) -> bytes:
        if data.count(0) == len(data):
            if len(data) not in self._zero:
                c = zlib.compressobj(9, zlib.DEFLATED, -15)
                self._zero[len(data)] = c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)
            return self._zero[len(data)]
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)

    def flush(self) -> bytes:
        return zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # the final (empty) block


def _zip_member(zf: zipfile.ZipFile, name: str, payload_header: bytes, zero_bytes: int) -> None:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED  # a bare ZipInfo would store the bytes uncompressed
    real = zipfile._get_compressor
    zipfile._get_compressor = lambda *a, **k: _ZeroRunDeflater()  # bench-only: see _ZeroRunDeflater
    try:
        with zf.open(info, "w", force_zip64=True) as fh:
            fh.write(payload_header)
            chunk = bytes(16 * MB)
            left = zero_bytes
            while left > 0:
                fh.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
    finally:
        zipfile._get_compressor = real


def _npy_header(shape: tuple, dtype: str = "<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@functools.lru_cache(maxsize=2)
def npz_inflation_bomb(gigabytes: float = 1.0) -> bytes:
    """``features.npy`` declares (n, 1024) float64 and holds that many zero bytes, deflated ~1000:1."""
    n = int(gigabytes * (1 << 30) // (1024 * 8))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        _zip_member(zf, "features.npy", _npy_header((n, 1024)), n * 1024 * 8)
        zf.writestr("labels.npy", _npy_arr(np.arange(n) % 2))
    return buf.getvalue()


def _npy_arr(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def npz_lying_header() -> bytes:
    """A tiny member whose .npy header claims a (100000, 16384) float64 array (13 GB)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("features.npy", _npy_header((100_000, 16_384)) + bytes(1024))
        zf.writestr("labels.npy", _npy_arr(np.arange(100_000) % 2))
    return buf.getvalue()


def npz_wide(dim: int = 200_000) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("features.npy", _npy_header((4, dim), "<f4") + bytes(4 * dim * 4))
        zf.writestr("labels.npy", _npy_arr(np.array([0, 1, 0, 1])))
    return buf.getvalue()


def npz_pickle() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, features=np.array([{"a": 1}, {"b": 2}, {"c": 3}], dtype=object), labels=np.array([0, 1, 0]))
    return buf.getvalue()


def npz_zip_in_zip() -> bytes:
    inner = io.BytesIO()
    np.savez(inner, features=np.ones((4, 2)), labels=np.array([0, 1, 0, 1]))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("features.npy", _npy_arr(np.ones((4, 2))))
        zf.writestr("labels.npy", _npy_arr(np.array([0, 1, 0, 1])))
        zf.writestr("inner.zip", inner.getvalue())
    return buf.getvalue()


def npz_path_names() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../../tmp/features.npy", _npy_arr(np.ones((4, 2))))
        zf.writestr("labels.npy", _npy_arr(np.array([0, 1, 0, 1])))
    return buf.getvalue()


def npz_many_members(n: int = 5000) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            zf.writestr(f"features_{i}.npy", b"")
    return buf.getvalue()


def csv_many_columns(n_cols: int = 200_000) -> bytes:
    header = "text,label," + ",".join(f"c{i}" for i in range(n_cols))
    row = "hello world,a," + ",".join("0" for _ in range(n_cols))
    row2 = "good bye,b," + ",".join("1" for _ in range(n_cols))
    return f"{header}\n{row}\n{row2}\n".encode()


def csv_huge_cell(cell: int = 5 * MB) -> bytes:
    return ("text,label\n" + "z" * cell + ",a\nsmall,b\n").encode()


def csv_many_fields_row() -> bytes:
    return b"text,label\nhello,a\n" + b"," * (20 * MB) + b"\n"


def jsonl_deep() -> bytes:
    return b'{"text": ' + b"[" * 200_000 + b"]" * 200_000 + b', "label": 1}\n'


# ---------------------------------------------------------------------- the corpus
NUL = "\x00"


def corpus(scale: float = 1.0) -> list[Attack]:
    """The attacks. ``scale`` < 1 shrinks the slowest bombs (the tests use a small scale)."""
    big = scale >= 1.0
    a: list[Attack] = []
    up = lambda name, fn, fname, **kw: a.append(Attack(name, "POST", "/v1/datasets",  # noqa: E731
                                                       files=lambda: {"file": (fname, fn())}, **kw))
    up("parquet: 2000 x 1 MB repeated string (dictionary)", lambda: parquet_repeated_string(2000 if big else 300),
       "bomb.parquet", tags={"bomb"})
    up("parquet: 40 x 2 MB plain cells (zstd)", lambda: parquet_plain_cells(40 if big else 6), "cells.parquet",
       tags={"bomb"})
    up("parquet: 20,000 columns", lambda: parquet_many_columns(20_000 if big else 3000), "wide.parquet")
    up("parquet: 5M rows", lambda: parquet_many_rows(5_000_000 if big else 300_000), "rows.parquet")
    up("parquet: truncated footer", lambda: parquet_repeated_string(10, 100)[:-40] + b"PAR1", "cut.parquet")
    up("npz: inflates to %s GB" % ("8" if big else "0.5"), lambda: npz_inflation_bomb(8.0 if big else 0.5),
       "bomb.npz", tags={"bomb"})
    up("npz: .npy header claims 13 GB", npz_lying_header, "liar.npz", tags={"bomb"})
    up("npz: 200,000 feature columns", npz_wide, "wide.npz")
    up("npz: pickled object array", npz_pickle, "pickle.npz")
    up("npz: zip inside the zip", npz_zip_in_zip, "nested.npz")
    up("npz: path-like member name", npz_path_names, "paths.npz")
    up("npz: 5,000 members", npz_many_members, "members.npz")
    up("npz: CSV named .npz", texts_csv, "data.npz")
    up("csv: 200,000 columns", lambda: csv_many_columns(200_000 if big else 20_000), "wide.csv")
    up("csv: one 5 MB cell", csv_huge_cell, "cell.csv")
    up("csv: a row of 20M empty fields", csv_many_fields_row, "fields.csv")
    up("csv: NUL in a text", lambda: b"text,label\nhel\x00lo,a\nworld,b\n", "nul.csv")
    up("csv: NUL in a label", lambda: b"text,label\nhello,a\x00\nworld,b\n", "nul-label.csv")
    up("csv: gzip named .csv", lambda: gzip.compress(texts_csv() * 1000), "data.csv")
    up("csv: not UTF-8", lambda: b"text,label\n\xff\xfe bad,a\nworld,b\n", "latin.csv")
    up("jsonl: 200,000-deep nesting", jsonl_deep, "deep.jsonl")
    up("jsonl: one 5 MB line", lambda: b'{"text": "' + b"q" * (5 * MB) + b'", "label": 1}\n', "line.jsonl")
    up("pickle named .csv", lambda: pickle.dumps({"text": ["a", "b"], "label": [0, 1]}), "data.csv")
    up("pickle named .pkl", lambda: pickle.dumps([1, 2]), "data.pkl")
    a.append(Attack("upload: NUL in the name field", "POST", "/v1/datasets",
                    files=lambda: {"file": ("ok.csv", texts_csv())}, data={"name": f"evil{NUL}name"}))
    a.append(Attack("upload: 100 MB over Content-Length", "POST", "/v1/datasets",
                    files=lambda: {"file": ("big.csv", bytes(100 * MB if big else 60 * MB))}, expect=(413,)))

    # JSON bodies
    a.append(Attack("feedback: 5 MB note", "POST", "/v1/feedback",
                    json_body={"source": "s", "target": "{dataset}", "metric": "accuracy", "value": 0.5,
                               "note": "n" * (5 * MB)}, expect=(413,)))
    a.append(Attack("feedback: 100,000-character note", "POST", "/v1/feedback",
                    json_body={"source": "s", "target": "{dataset}", "metric": "accuracy", "value": 0.5,
                               "note": "n" * 100_000}))
    a.append(Attack("70 MB JSON body", "POST", "/v1/rankings",
                    raw_body=lambda: b'{"target": "' + b"t" * (70 * MB if big else 8 * MB) + b'"}', expect=(413,)))
    a.append(Attack("feedback: NaN value", "POST", "/v1/feedback",
                    raw_body=lambda: b'{"source": "s", "target": "x", "metric": "acc", "value": NaN}'))
    for fld in ("source", "metric", "note"):
        body = {"source": "s", "target": "{dataset}", "metric": "accuracy", "value": 0.5, "note": "ok"}
        body[fld] = f"a{NUL}b"
        a.append(Attack(f"feedback: NUL in {fld}", "POST", "/v1/feedback", json_body=body))
    a.append(Attack("ranking: NUL in target", "POST", "/v1/rankings",
                    json_body={"target": f"x{NUL}", "candidates": "models"}))
    a.append(Attack("ranking: NUL in an estimator name", "POST", "/v1/rankings",
                    json_body={"target": "{dataset}", "candidates": "models", "estimators": [f"logme{NUL}"]}))
    a.append(Attack("ranking: NUL in a params key", "POST", "/v1/rankings",
                    json_body={"target": "{dataset}", "candidates": "models", "estimators": ["logme"],
                               "params": {"logme": {f"regression{NUL}": True}}}))
    a.append(Attack("source: NUL in name", "POST", "/v1/sources", json_body={"dataset": "{dataset}",
                                                                              "name": f"src{NUL}"}))
    a.append(Attack("source: NUL in description", "POST", "/v1/sources",
                    json_body={"dataset": "{dataset}", "name": "fine", "description": f"d{NUL}"}))
    a.append(Attack("ranking: top_k 10^30", "POST", "/v1/rankings",
                    json_body={"target": "{dataset}", "candidates": "models", "top_k": 10**30}))
    a.append(Attack("ranking: top_k 1e9", "POST", "/v1/rankings",
                    json_body={"target": "{dataset}", "candidates": "models", "top_k": 1e9}))
    a.append(Attack("ranking: top_k 'lots'", "POST", "/v1/rankings",
                    json_body={"target": "{dataset}", "candidates": "models", "top_k": "lots"}))
    for value in ("1e9", "Infinity", "-1", "1.5", "\"many\""):
        a.append(Attack(f"sliced_wasserstein n_projections={value}", "POST", "/v1/rankings",
                        raw_body=lambda v=value: (
                            '{"target": "{dataset}", "candidates": "tasks", "estimators": ["sliced_wasserstein"], '
                            '"params": {"sliced_wasserstein": {"n_projections": ' + v + '}}}').encode(),
                        tags={"needs_source"}))
    a.append(Attack("proxy_a_distance cv=Infinity", "POST", "/v1/rankings",
                    raw_body=lambda: b'{"target": "{dataset}", "candidates": "tasks", "estimators": '
                                     b'["proxy_a_distance"], "params": {"proxy_a_distance": {"cv": Infinity}}}',
                    tags={"needs_source"}))
    a.append(Attack("proxy_a_distance cv=10^6", "POST", "/v1/rankings",
                    json_body={"target": "{dataset}", "candidates": "tasks", "estimators": ["proxy_a_distance"],
                               "params": {"proxy_a_distance": {"cv": 10**6}}}, tags={"needs_source"}))
    a.append(Attack("tmi k=10^12", "POST", "/v1/rankings",
                    json_body={"target": "{dataset}", "candidates": "models", "estimators": ["tmi"],
                               "params": {"tmi": {"k": 10**12}}}))
    a.append(Attack("nleep n_components=10^9", "POST", "/v1/rankings",
                    json_body={"target": "{dataset}", "candidates": "models", "estimators": ["nleep"],
                               "params": {"nleep": {"n_components": 10**9}}}))

    # path ids and query strings
    for path in ("/v1/datasets/%00", "/v1/datasets/a%00b", "/v1/rankings/%00", "/v1/jobs/%00",
                 "/v1/sources/%00", "/v1/datasets/%01x"):
        a.append(Attack(f"GET {path}", "GET", path, expect=(404, 422)))
    a.append(Attack("DELETE /v1/datasets/%00", "DELETE", "/v1/datasets/%00", expect=(404, 422)))
    a.append(Attack("DELETE /v1/sources/%00", "DELETE", "/v1/sources/%00", expect=(404, 422)))
    for path in ("/v1/datasets", "/v1/jobs", "/v1/rankings"):
        a.append(Attack(f"GET {path}?offset=2^63", "GET", path, params={"offset": "9223372036854775808"}))
        a.append(Attack(f"GET {path}?limit=-1", "GET", path, params={"limit": "-1"}))
    a.append(Attack("GET /v1/datasets?offset=1e3", "GET", "/v1/datasets", params={"offset": "1e3"}))
    a.append(Attack("GET /v1/feedback?target=NUL", "GET", "/v1/feedback", params={"target": NUL}))
    a.append(Attack("GET /v1/transfer-matrix?estimator=NUL", "GET", "/v1/transfer-matrix",
                    params={"estimator": f"x{NUL}"}))
    a.append(Attack("GET /v1/jobs?status=NUL", "GET", "/v1/jobs", params={"status": NUL}))
    return a


# ---------------------------------------------------------------------- running
def fill(value, ids: dict):
    if isinstance(value, str):
        for k, v in ids.items():
            value = value.replace("{" + k + "}", v)
        return value
    if isinstance(value, dict):
        return {fill(k, ids): fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, ids) for v in value]
    return value


def send(client, attack: Attack, ids: dict, files: dict | None = None):
    """Send ``attack`` with an httpx-compatible client (TestClient or httpx.Client); ``files``:
    the attack's upload, built beforehand (so that timing measures the server only)."""
    path = fill(attack.path, ids)
    kw: dict = {}
    if attack.params:
        kw["params"] = attack.params
    if attack.files is not None:
        kw["files"] = files if files is not None else attack.files()
        if attack.data:
            kw["data"] = attack.data
    elif attack.json_body is not None:
        kw["json"] = fill(attack.json_body, ids)
    elif attack.raw_body is not None:
        body = attack.raw_body()
        for k, v in ids.items():
            body = body.replace(("{" + k + "}").encode(), v.encode())
        kw["content"] = body
        kw["headers"] = {"content-type": "application/json"}
    return client.request(attack.method, path, **kw)


def setup_ids(client) -> dict:
    """A text target (NPZ, base-encoder dim) and one NPZ source task for the tasks attacks."""
    rng = np.random.default_rng(0)
    dim = None
    for enc in client.get("/v1/sources").json().get("models", []):
        if enc["name"] == client.get("/v1/info").json().get("base_encoder"):
            dim = enc["dim"]
    dim = dim or 50
    ids = {}
    for name in ("target", "source"):
        buf = io.BytesIO()
        np.savez(buf, features=rng.normal(size=(40, dim)), labels=np.arange(40) % 2)
        r = client.post("/v1/datasets", files={"file": (f"{name}.npz", buf.getvalue())})
        assert r.status_code in (200, 201), r.text
        ids[name] = r.json()["id"]
    r = client.post("/v1/sources", json={"dataset": ids["source"], "name": "attack-source"})
    assert r.status_code in (201, 202, 409), r.text
    return {"dataset": ids["target"], "source": "attack-source"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_kb(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def start_server(data_dir: Path, database_url: str | None, env_extra: dict | None = None):
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TRANSFERRANK_SEED_DEMO="0", TRANSFERRANK_TRAIN_DEMO_ESMS="0", TRANSFERRANK_WARM_UP="0",
               TRANSFERRANK_BASE_ENCODER="glove-6b-50d", TRANSFERRANK_LOG_LEVEL="WARNING", OMP_NUM_THREADS="1")
    env.pop("TRANSFERRANK_DATABASE_URL", None)
    if database_url:
        env["TRANSFERRANK_DATABASE_URL"] = database_url
    env.update(env_extra or {})
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--data-dir", str(data_dir), "--log-level", "warning"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    import httpx

    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start in 120 s")


def stop_server(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _fresh_pg_schema(url: str) -> tuple[str, Callable[[], None]]:
    import uuid

    from sqlalchemy import create_engine, text

    schema = f"attacks_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in url else "?"

    def drop():
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    return f"{url}{sep}options=-csearch_path%3D{schema}", drop


def run(database_url: str | None, scale: float = 1.0) -> list[dict]:
    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="attacks-"))
    drop = None
    if database_url:
        database_url, drop = _fresh_pg_schema(database_url)
    proc, url = start_server(tmp / "data", database_url)
    rows = []
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            ids = setup_ids(client)
            base_kb = _proc_kb(proc.pid, "VmRSS")
            for attack in corpus(scale):
                files = attack.files() if attack.files is not None else None
                resettable = _reset_peak(proc.pid)
                t0 = time.perf_counter()
                try:
                    r = send(client, attack, ids, files)
                    status, detail = r.status_code, (r.json().get("detail") if r.headers.get(
                        "content-type", "").startswith("application/json") else r.text[:200])
                except httpx.HTTPError as exc:
                    status, detail = 0, f"{type(exc).__name__}: {exc}"
                seconds = time.perf_counter() - t0
                if proc.poll() is not None:
                    status, detail = -1, "server died"
                peak_kb = _proc_kb(proc.pid, "VmHWM") if proc.poll() is None else 0
                rows.append({"attack": attack.name, "status": status, "ok": status in attack.expect,
                             "seconds": round(seconds, 3), "peak_rss_mb": round(peak_kb / 1024, 1),
                             "peak_reset": resettable, "detail": str(detail)[:160]})
                print(f"{status:>4} {seconds:7.2f}s {peak_kb / 1024:8.1f} MB  {attack.name}", flush=True)
                if status == -1:
                    break
            rows.append({"attack": "(server RSS after setup)", "status": None, "ok": True, "seconds": 0,
                         "peak_rss_mb": round(base_kb / 1024, 1), "peak_reset": True, "detail": ""})
    finally:
        stop_server(proc)
        shutil.rmtree(tmp, ignore_errors=True)
        if drop:
            drop()
    return rows


def to_markdown(results: dict[str, list[dict]], command: str) -> str:
    lines = ["# Attacks: hostile input against a real `transferrank serve`", "",
             f"Command: `{command}`", "",
             "Each row: one request from `bench/attacks.py::corpus()`; status must be 4xx (413/422/404) "
             "with a message; peak RSS is the server's `VmHWM` after the attack, reset before it "
             "(`/proc/<pid>/clear_refs`). The acceptance bound is 2 GB.", ""]
    for db, rows in results.items():
        attacks = [r for r in rows if r["status"] is not None]
        n5 = sum(1 for r in attacks if r["status"] is not None and (r["status"] >= 500 or r["status"] <= 0))
        bad = sum(1 for r in attacks if not r["ok"])
        peak = max((r["peak_rss_mb"] for r in attacks), default=0)
        lines += [f"## {db}", "",
                  f"{len(attacks)} attacks, {n5} answered 5xx or no answer, {bad} outside the expected statuses; "
                  f"highest peak RSS {peak:.0f} MB.", "",
                  "| attack | status | seconds | peak RSS MB | message |", "|---|---|---|---|---|"]
        for r in rows:
            msg = str(r["detail"]).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {r['attack']} | {r['status'] if r['status'] is not None else ''} | {r['seconds']} | "
                         f"{r['peak_rss_mb']} | {msg} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL"),
                   help="PostgreSQL URL (a fresh schema is used); SQLite always runs")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--out", default=str(RESULTS / "attacks.md"))
    args = p.parse_args(argv)
    results = {"SQLite": run(None, args.scale)}
    if args.database_url:
        results["PostgreSQL"] = run(args.database_url, args.scale)
    shown = "python -m bench.attacks" + (" --database-url postgresql+psycopg://.../DB" if args.database_url else "")
    if args.scale != 1.0:
        shown += f" --scale {args.scale}"
    Path(args.out).write_text(to_markdown(results, shown))
    (Path(args.out).with_suffix(".json")).write_text(json.dumps(results, indent=1))
    bad = [r for rows in results.values() for r in rows if not r["ok"]]
    print(f"wrote {args.out}; {len(bad)} attack(s) outside the expected statuses")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
