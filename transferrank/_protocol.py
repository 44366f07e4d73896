"""The request/response logic shared by ``Client`` and ``AsyncClient`` (sans-I/O).

Every operation is a generator that yields ``Call`` (send this HTTP request, send me the
response back) or ``Sleep`` (wait this long) and returns the parsed result. ``Client`` drives
the generators with ``httpx.Client`` and ``time.sleep``, ``AsyncClient`` with
``httpx.AsyncClient`` and ``asyncio.sleep``, so each operation is written once. Errors
(``{"detail": ...}``), 429 retries, job polling with backoff and progress reporting live here.
"""
from __future__ import annotations

import csv
import io
import os
import time
import zipfile
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from transferrank.errors import JobFailedError, TransferRankTimeoutError, error_for
from transferrank.models import Dataset, Job, Ranking

Progress = Callable[[float, "str | None"], Any]


@dataclass
class Call:
    method: str
    path: str
    params: Any = None
    json: Any = None
    files: dict | None = None
    data: dict | None = None


@dataclass
class Sleep:
    seconds: float


@dataclass
class Polling:
    """Backoff of job polling: ``first`` seconds, times ``factor`` each poll, at most ``max``."""

    first: float = 0.05
    factor: float = 1.5
    max: float = 2.0


@dataclass
class Options:
    retries: int = 3  # 429 / 503 retries, honouring Retry-After
    polling: Polling = field(default_factory=Polling)


Op = Generator["Call | Sleep", Any, Any]


def seg(value: str) -> str:
    """One URL path segment."""
    return quote(str(value), safe="")


# ---------------------------------------------------------------------- errors
def _detail(resp) -> tuple[str, object]:
    try:
        body = resp.json()
    except ValueError:
        text = resp.text.strip()
        return (text[:500] or f"HTTP {resp.status_code}"), text
    if isinstance(body, dict) and "detail" in body:
        d = body["detail"]
        return (d if isinstance(d, str) else str(d)), body
    return str(body)[:500], body


def _retry_after(resp) -> float | None:
    raw = resp.headers.get("retry-after")
    try:
        return max(float(raw), 0.0) if raw is not None else None
    except ValueError:
        return None


def raise_for(resp) -> None:
    if resp.status_code < 400:
        return
    detail, body = _detail(resp)
    raise error_for(resp.status_code, detail, body, _retry_after(resp))


def request(call: Call, opts: Options) -> Op:
    """Send ``call``; retry 429/503 up to ``opts.retries`` times (Retry-After or backoff); raise
    the typed error of any other 4xx/5xx; return the response."""
    attempt = 0
    while True:
        resp = yield call
        if resp.status_code in (429, 503) and attempt < opts.retries:
            attempt += 1
            wait = _retry_after(resp)
            yield Sleep(min(wait if wait is not None else 0.5 * 2 ** attempt, 30.0))
            continue
        raise_for(resp)
        return resp


def get_json(path: str, opts: Options, parse: Callable = lambda d: d, params=None) -> Op:
    resp = yield from request(Call("GET", path, params=params), opts)
    return parse(resp.json())


def send_json(method: str, path: str, opts: Options, body=None, parse: Callable = lambda d: d, params=None) -> Op:
    resp = yield from request(Call(method, path, json=body, params=params), opts)
    return parse(resp.json()) if resp.content else None


# ---------------------------------------------------------------------- uploads
def _is_dataframe(obj) -> bool:
    return type(obj).__module__.split(".")[0] == "pandas" and hasattr(obj, "columns")


def _csv_bytes(texts, labels, pairs=None) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["text", "label"] + (["text_pair"] if pairs is not None else []))
    for i, (t, y) in enumerate(zip(texts, labels)):
        w.writerow([t, y] + ([pairs[i]] if pairs is not None else []))
    return buf.getvalue().encode("utf-8")


def _labels_array(y) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dtype.kind == "O":
        y = y.astype(str)
    return y


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _zip_dir(path: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for f in sorted(path.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(path).as_posix())
    return buf.getvalue()


def is_text_list(X) -> bool:
    if isinstance(X, str):
        return False
    if isinstance(X, np.ndarray):
        return X.ndim == 1 and X.dtype.kind in "UO" and all(isinstance(x, str) for x in X[:50])
    return isinstance(X, (list, tuple)) and len(X) > 0 and all(isinstance(x, str) for x in X)


def encode_dataset(data, name: str | None = None) -> tuple[str, bytes]:
    """``(filename, content)`` of an upload from a path (file, or an ImageFolder directory,
    zipped), a pandas DataFrame (``text``/``label`` columns -> CSV; ``image`` bytes -> Parquet;
    otherwise numeric feature columns + ``label`` -> NPZ) or ``(X, y)``: texts -> CSV, a 2-D
    numeric array -> NPZ, a dict ``{model: 2-D array}`` -> NPZ with ``features_<model>``."""
    stem = name or "dataset"
    if isinstance(data, (str, os.PathLike)):
        p = Path(data)
        if p.is_dir():
            return p.name + ".zip", _zip_dir(p)
        if not p.is_file():
            raise FileNotFoundError(f"no such file: {p}")
        return p.name, p.read_bytes()
    if _is_dataframe(data):
        cols = [str(c) for c in data.columns]
        if "label" not in cols:
            raise ValueError(f"the DataFrame needs a 'label' column; it has {', '.join(cols[:20])}")
        if "text" in cols:
            pairs = data["text_pair"].astype(str).tolist() if "text_pair" in cols else None
            return stem + ".csv", _csv_bytes(data["text"].astype(str).tolist(), data["label"].tolist(), pairs)
        if "image" in cols:
            buf = io.BytesIO()
            data[["image", "label"]].to_parquet(buf)
            return stem + ".parquet", buf.getvalue()
        X = data.drop(columns=["label"]).to_numpy()
        if X.dtype.kind not in "fiub":
            raise ValueError("a DataFrame without a 'text' column must have numeric feature columns besides 'label'")
        return stem + ".npz", _npz_bytes(features=X, labels=_labels_array(data["label"].to_numpy()))
    if isinstance(data, tuple) and len(data) == 2:
        X, y = data
        y = _labels_array(y)
        if is_text_list(X):
            if len(X) != len(y):
                raise ValueError(f"{len(X)} texts but {len(y)} labels")
            return stem + ".csv", _csv_bytes([str(x) for x in X], y.tolist())
        if isinstance(X, dict) and not hasattr(X, "tocsr"):
            if not X:
                raise ValueError("the dict of feature arrays is empty")
            arrays = {f"features_{k}": np.asarray(v) for k, v in X.items()}
            first = next(iter(arrays.values()))
            return stem + ".npz", _npz_bytes(features=first, labels=y, **arrays)
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be a list of texts or a 2-D feature array, got an array of shape {X.shape}")
        return stem + ".npz", _npz_bytes(features=X, labels=y)
    raise TypeError("upload takes a file path, a pandas DataFrame, or (X, y) with X texts or a 2-D array; "
                    f"got {type(data).__name__}")


def dict_candidates(data) -> list[str] | None:
    """The candidate names of ``(dict of feature arrays, y)``: they are the ranking's sources
    (the NPZ's required ``features`` array repeats the first one)."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], dict) and not hasattr(data[0], "tocsr"):
        return [str(k) for k in data[0]]
    return None


def upload(data, opts: Options, name: str | None = None, task_type: str | None = None) -> Op:
    filename, content = encode_dataset(data, name)
    form = {k: v for k, v in (("name", name), ("task_type", task_type)) if v is not None}
    resp = yield from request(Call("POST", "/v1/datasets", files={"file": (filename, content)}, data=form or None),
                              opts)
    return Dataset.from_json(resp.json(), created=resp.status_code == 201)


def target_id(dataset_or_id, opts: Options) -> Op:
    """A dataset id from a Dataset, an id, or anything ``upload`` takes (uploaded first)."""
    if isinstance(dataset_or_id, Dataset):
        return dataset_or_id.id
    if isinstance(dataset_or_id, str) and not os.path.isfile(dataset_or_id):
        return dataset_or_id
    ds = yield from upload(dataset_or_id, opts)
    return ds.id


# ---------------------------------------------------------------------- progress and jobs
class Reporter:
    """Turns a ``progress`` argument into calls: a callable gets ``(fraction, message)``;
    ``True`` or ``"tqdm"`` draws a tqdm bar (``tqdm.auto``: a widget in notebooks); ``None``
    draws one only when tqdm is installed and the work was queued as a job; ``False`` is silent."""

    def __init__(self, progress, desc: str = "ranking"):
        self.progress, self.desc, self._bar, self._last = progress, desc, None, 0

    def _tqdm(self):
        if self._bar is None:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                self._bar = False
                return None
            self._bar = tqdm(total=100, desc=self.desc, unit="%", leave=False)
        return self._bar or None

    def __call__(self, fraction: float, message: str | None = None) -> None:
        if callable(self.progress) and not isinstance(self.progress, bool):
            self.progress(fraction, message)
            return
        if self.progress is False:
            return
        bar = self._tqdm()
        if bar is not None:
            pct = int(round(100 * min(max(fraction, 0.0), 1.0)))
            if pct > self._last:
                bar.update(pct - self._last)
                self._last = pct
            if message:
                bar.set_postfix_str(message[:60], refresh=False)

    def close(self) -> None:
        if self._bar:
            self._bar.close()


def wait_job(job_id: str, opts: Options, report: Callable | None = None, timeout: float | None = None) -> Op:
    """Poll ``GET /v1/jobs/{id}`` with exponential backoff until done; raise on failed/cancelled."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = opts.polling.first
    while True:
        job = yield from get_json(f"/v1/jobs/{seg(job_id)}", opts, Job.from_json)
        if report is not None:
            report(job.progress, job.message)
        if job.status == "done":
            return job
        if job.status in ("failed", "cancelled"):
            raise JobFailedError(f"job {job.id} {job.status}: {job.error or job.message or 'no reason given'}",
                                 job=job.raw)
        if deadline is not None and time.monotonic() + delay > deadline:
            raise TransferRankTimeoutError(f"job {job.id} still {job.status} after {timeout} s "
                                           f"(progress {job.progress:.0%}); wait again with client.wait_job")
        yield Sleep(delay)
        delay = min(delay * opts.polling.factor, opts.polling.max)


def ranking_body(target: str, candidates: str, estimators, top_k: int, **extra) -> dict:
    if isinstance(estimators, str):
        estimators = [e.strip() for e in estimators.split(",") if e.strip()]
    body = {"target": target, "candidates": candidates, "estimators": list(estimators) if estimators else None,
            "top_k": int(top_k)}
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def rank(dataset_or_id, opts: Options, candidates: str, estimators, top_k: int, wait: bool, progress,
         timeout: float | None = None, **extra) -> Op:
    if extra.get("sources") is None and dict_candidates(dataset_or_id):
        extra["sources"] = dict_candidates(dataset_or_id)
    target = yield from target_id(dataset_or_id, opts)
    resp = yield from request(Call("POST", "/v1/rankings", json=ranking_body(target, candidates, estimators, top_k,
                                                                              **extra)), opts)
    out = resp.json()
    if resp.status_code == 200 or not wait:
        return Ranking.from_json(out)
    reporter = Reporter(progress, f"ranking {candidates}")
    try:
        yield from wait_job(out["job"], opts, reporter, timeout)
        reporter(1.0, "done")
    finally:
        reporter.close()
    return (yield from get_json(f"/v1/rankings/{seg(out['id'])}", opts, Ranking.from_json))


def rank_batch(targets, opts: Options, candidates: str, estimators, top_k: int, wait: bool, progress,
               timeout: float | None = None, **extra) -> Op:
    ids = []
    for t in targets:
        ids.append((yield from target_id(t, opts)))
    body = ranking_body(ids[0] if ids else "", candidates, estimators, top_k, **extra)
    body.pop("target")
    body["targets"] = ids
    resp = yield from request(Call("POST", "/v1/rankings/batch", json=body), opts)
    out = resp.json()
    if not wait:
        return [Ranking.from_json(r) for r in out["rankings"]]
    if resp.status_code == 202:
        reporter = Reporter(progress, f"ranking {len(ids)} targets")
        try:
            yield from wait_job(out["job"], opts, reporter, timeout)
        finally:
            reporter.close()
    result = []
    for r in out["rankings"]:
        result.append((yield from get_json(f"/v1/rankings/{seg(r['id'])}", opts, Ranking.from_json)))
    return result
