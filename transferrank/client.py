"""``Client`` (blocking, ``httpx.Client``) and ``AsyncClient`` (``httpx.AsyncClient``).

Both inherit every endpoint method from ``_Endpoints``: a method builds the operation (a
generator from ``transferrank._protocol``) and hands it to the client's ``_run``, which sends
the requests. On ``AsyncClient`` every method therefore returns an awaitable of the documented
result::

    with Client("http://127.0.0.1:8000") as tr:
        ranking = tr.rank(df, candidates="models")
    async with AsyncClient("http://127.0.0.1:8000") as tr:
        ranking = await tr.rank(df, candidates="models")
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from typing import Any, Literal

import httpx

from transferrank import _protocol as P
from transferrank._protocol import Call, Options, Polling, Sleep, seg
from transferrank.errors import TransferRankConnectionError, TransferRankTimeoutError
from transferrank.models import Dataset, Feedback, Job, Ranking, Source

API_KEY_ENV = "TRANSFERRANK_API_KEY"
URL_ENV = "TRANSFERRANK_URL"
#: The client's own environment variables (the service's are ``app.core.config.Settings``).
CLIENT_ENV = {API_KEY_ENV: "API key sent as `Authorization: Bearer`", URL_ENV: "service URL when none is given"}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("transferrank")
    except Exception:  # not installed (a source checkout on PYTHONPATH)
        return "0.1.0"


def _many(value) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


class _Endpoints:
    """Typed methods for every endpoint; ``_run`` (sync or async) executes them."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 retries: int = 3, polling: Polling | None = None, headers: dict | None = None):
        url = url or os.environ.get(URL_ENV)
        if not url:
            raise ValueError(f"give the service URL, e.g. Client('http://127.0.0.1:8000'), or set {URL_ENV}")
        self.url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else (os.environ.get(API_KEY_ENV) or None)
        self.timeout = timeout
        self.options = Options(retries=retries, polling=polling or Polling())
        self.headers = {"User-Agent": f"transferrank-client/{_version()}", **(headers or {})}
        if self.api_key:
            self.headers["Authorization"] = f"Bearer {self.api_key}"

    def _run(self, op):  # pragma: no cover - implemented by the two clients
        raise NotImplementedError

    def _get(self, path: str, parse=lambda d: d, params=None):
        return self._run(P.get_json(path, self.options, parse, params))

    def _send(self, method: str, path: str, body=None, parse=lambda d: d, params=None):
        return self._run(P.send_json(method, path, self.options, body, parse, params))

    # ------------------------------------------------------------------ service
    def health(self) -> dict:
        """``GET /healthz``."""
        return self._get("/healthz")

    def info(self) -> dict:
        """``GET /v1/info``: data dir, database, workers, index, base encoder."""
        return self._get("/v1/info")

    def estimators(self) -> dict:
        """``GET /v1/estimators``: names, direction, paper, cost, defaults."""
        return self._get("/v1/estimators")

    # ------------------------------------------------------------------ datasets
    def upload(self, path_or_dataframe_or_arrays, name: str | None = None,
               task_type: str | None = None) -> Dataset:
        """``POST /v1/datasets`` from a file path (CSV/TSV/JSONL/Parquet/NPZ/zip, or an ImageFolder
        directory), a pandas DataFrame (``text``/``label`` columns, or numeric features +
        ``label``) or ``(X, y)`` with X a list of texts or a 2-D feature array."""
        return self._run(P.upload(path_or_dataframe_or_arrays, self.options, name, task_type))

    def datasets(self, limit: int = 100, offset: int = 0) -> list[Dataset]:
        return self._get("/v1/datasets", lambda d: [Dataset.from_json(x) for x in d["datasets"]],
                         {"limit": limit, "offset": offset})

    def dataset(self, dataset_id: str) -> Dataset:
        return self._get(f"/v1/datasets/{seg(dataset_id)}", Dataset.from_json)

    def delete_dataset(self, dataset_id: str) -> dict:
        return self._send("DELETE", f"/v1/datasets/{seg(dataset_id)}")

    # ------------------------------------------------------------------ sources and models
    def sources(self, limit: int | None = None, offset: int | None = None) -> list[Source]:
        """``GET /v1/sources``: source tasks then models."""
        params = {k: v for k, v in (("limit", limit), ("offset", offset)) if v is not None} or None
        return self._get("/v1/sources", lambda d: [Source.from_json(x) for x in d.get("tasks", [])]
                         + [Source.from_json(x) for x in d.get("models", [])], params)

    def source(self, name: str) -> Source:
        return self._get(f"/v1/sources/{seg(name)}", Source.from_json)

    def register_source(self, dataset, name: str | None = None, description: str = "", licence: str = "",
                        train_esm: bool = True, train: dict | None = None) -> dict:
        """``POST /v1/sources``: a source task from an uploaded dataset (``Dataset`` or id); the
        response holds ``job`` when the ESM is trained in the background."""
        body = {"dataset": dataset.id if isinstance(dataset, Dataset) else dataset, "name": name,
                "description": description, "licence": licence, "train_esm": train_esm, "train": train or {}}
        return self._send("POST", "/v1/sources", body)

    def delete_source(self, name: str) -> dict:
        return self._send("DELETE", f"/v1/sources/{seg(name)}")

    def import_sources(self, path: str | os.PathLike, base_encoder: str | None = None,
                       prefix: str | None = None) -> dict:
        """``POST /v1/sources/import``: a zip (or a folder, zipped here) of hf-dataset-selector ESMs."""
        def op():
            filename, content = P.encode_dataset(path)
            form = {k: v for k, v in (("base_encoder", base_encoder), ("prefix", prefix)) if v}
            resp = yield from P.request(Call("POST", "/v1/sources/import", files={"file": (filename, content)},
                                             data=form or None), self.options)
            return resp.json()
        return self._run(op())

    def models(self) -> list[dict]:
        """``GET /v1/models``."""
        return self._get("/v1/models", lambda d: d.get("models", d) if isinstance(d, dict) else d)

    def model(self, name: str) -> dict:
        return self._get(f"/v1/models/{seg(name)}")

    def add_model(self, name: str, path: str, kind: str | None = None, modality: str | None = None,
                  pooling: str | None = None, licence: str | None = None, layer: int | None = None) -> dict:
        """``POST /v1/models``: register a model directory or TorchScript file (a path on the
        server's machine) as a ranking candidate; ``None`` lets the server detect kind / modality."""
        body = {"name": name, "path": str(path), "kind": kind, "modality": modality, "pooling": pooling,
                "licence": licence, "layer": layer}
        return self._send("POST", "/v1/models", {k: v for k, v in body.items() if v is not None})

    def delete_model(self, name: str) -> dict:
        return self._send("DELETE", f"/v1/models/{seg(name)}")

    # ------------------------------------------------------------------ rankings and jobs
    def rank(self, dataset_or_id, candidates: str = "models", estimators=None, top_k: int = 10, wait: bool = True,
             progress=None, *, sources: Iterable[str] | None = None, prefilter_k: int | None = None,
             params: dict | None = None, use_feedback: bool | None = None, bootstrap: int | None = None,
             timeout: float | None = None) -> Ranking:
        """Rank ``candidates`` ("models" or "tasks") for a dataset (a ``Dataset``, an id, or
        anything ``upload`` takes). A 200 returns at once; a 202 is followed by polling the job
        (backoff) while ``progress`` reports: a callable ``(fraction, message)``, ``True`` for
        a tqdm bar, ``None`` for a bar when tqdm is installed, ``False`` for none. With
        ``wait=False`` the queued ranking is returned (``ranking.job``); fetch it later with
        ``client.ranking(id)``."""
        return self._run(P.rank(dataset_or_id, self.options, candidates, estimators, top_k, wait, progress, timeout,
                                sources=_many(sources), prefilter_k=prefilter_k, params=params,
                                use_feedback=use_feedback, bootstrap=bootstrap))

    def rank_batch(self, targets: Iterable, candidates: str = "models", estimators=None, top_k: int = 10,
                   wait: bool = True, progress=None, *, sources: Iterable[str] | None = None,
                   prefilter_k: int | None = None, timeout: float | None = None) -> list[Ranking]:
        """``POST /v1/rankings/batch``: several targets in one request and one job; one
        ``Ranking`` per target, in order."""
        return self._run(P.rank_batch(list(targets), self.options, candidates, estimators, top_k, wait, progress,
                                      timeout, sources=_many(sources), prefilter_k=prefilter_k))

    def ranking(self, ranking_id: str) -> Ranking:
        return self._get(f"/v1/rankings/{seg(ranking_id)}", Ranking.from_json)

    def rankings(self, target: str | None = None, limit: int = 100, offset: int = 0) -> list[Ranking]:
        """``GET /v1/rankings?target=&limit=&offset=``."""
        params = {"limit": limit, "offset": offset, **({"target": target} if target else {})}
        return self._get("/v1/rankings", lambda d: [Ranking.from_json(x) for x in d["rankings"]], params)

    def job(self, job_id: str) -> Job:
        return self._get(f"/v1/jobs/{seg(job_id)}", Job.from_json)

    def jobs(self, status: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        """``GET /v1/jobs?status=&limit=&offset=``."""
        params = {"limit": limit, "offset": offset, **({"status": status} if status else {})}
        return self._get("/v1/jobs", lambda d: [Job.from_json(x) for x in d["jobs"]], params)

    def cancel_job(self, job_id: str) -> Job:
        """``DELETE /v1/jobs/{id}``: the job ends as ``cancelled``."""
        return self._send("DELETE", f"/v1/jobs/{seg(job_id)}", parse=Job.from_json)

    def wait_job(self, job_id: str, progress=None, timeout: float | None = None) -> Job:
        """Poll a job until it is done; raises ``JobFailedError`` when it fails or is cancelled."""
        return self._run(P.wait_job(job_id, self.options, P.Reporter(progress, "job"), timeout))

    # ------------------------------------------------------------------ feedback and the matrix
    def feedback(self, source: str, target, metric: str, value: float, higher_is_better: bool = True,
                 note: str | None = None) -> Feedback:
        """``POST /v1/feedback``: "source fine-tuned on target reached metric = value"."""
        body = {"source": source, "target": target.id if isinstance(target, Dataset) else target,
                "metric": metric, "value": float(value), "higher_is_better": higher_is_better, "note": note}
        return self._send("POST", "/v1/feedback", body, Feedback.from_json)

    def list_feedback(self, target: str | None = None, source: str | None = None) -> list[Feedback]:
        params = {k: v for k, v in (("target", target), ("source", source)) if v}
        return self._get("/v1/feedback", lambda d: [Feedback.from_json(x) for x in d["feedback"]], params or None)

    def transfer_matrix(self, estimator=None, target=None, source=None,
                        format: Literal["json", "csv", "parquet"] = "json", layout: Literal["long", "wide"] = "long",
                        limit: int | None = None, offset: int | None = None, value: str | None = None):
        """``GET /v1/transfer-matrix``: ``estimator``/``target``/``source`` take one name or a
        list; ``layout="wide"`` pivots sources x targets (cells: ``value`` = the combined score
        or an estimator). Returns the JSON dict, the CSV text, or the Parquet bytes."""
        params = self._matrix_params(estimator, target, source, layout, limit, offset)
        params.append(("format", format))
        if value is not None:
            params.append(("value", value))

        def op():
            resp = yield from P.request(Call("GET", "/v1/transfer-matrix", params=params), self.options)
            return resp.json() if format == "json" else (resp.text if format == "csv" else resp.content)
        return self._run(op())

    def transfer_matrix_png(self, estimator=None, target=None, source=None, limit: int | None = None,
                            value: str = "score", title: str | None = None) -> bytes:
        """``GET /v1/transfer-matrix.png``: the heatmap (sources x targets, ``value`` = the
        combined score or an estimator) as PNG bytes."""
        params = self._matrix_params(estimator, target, source, None, limit, None)
        params.append(("value", value))
        if title:
            params.append(("title", title))

        def op():
            resp = yield from P.request(Call("GET", "/v1/transfer-matrix.png", params=params), self.options)
            return resp.content
        return self._run(op())

    @staticmethod
    def _matrix_params(estimator, target, source, layout, limit, offset) -> list[tuple[str, Any]]:
        params: list[tuple[str, Any]] = []
        for key, value in (("estimator", estimator), ("target", target), ("source", source)):
            params += [(key, v.id if isinstance(v, Dataset) else v) for v in (_many(value) or [])]
        for key, value in (("layout", layout), ("limit", limit), ("offset", offset)):
            if value is not None:
                params.append((key, value))
        return params

    # ------------------------------------------------------------------ keys (admin scope)
    def create_key(self, owner: str, scopes: Iterable[str] = ("read", "write")) -> dict:
        return self._send("POST", "/v1/keys", {"owner": owner, "scopes": list(scopes)})

    def keys(self) -> list[dict]:
        return self._get("/v1/keys", lambda d: d["keys"])

    def revoke_key(self, key_id: str) -> dict:
        return self._send("DELETE", f"/v1/keys/{seg(key_id)}")


def _httpx_args(call: Call) -> dict:
    return {"params": call.params, "json": call.json, "files": call.files, "data": call.data}


class Client(_Endpoints):
    """Blocking client. ``Client(url, api_key=None)``; the key also comes from
    ``TRANSFERRANK_API_KEY``. Use as a context manager or call ``close()``."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 retries: int = 3, polling: Polling | None = None, headers: dict | None = None,
                 transport: httpx.BaseTransport | None = None):
        super().__init__(url, api_key, timeout=timeout, retries=retries, polling=polling, headers=headers)
        self._http = httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout, transport=transport)

    def _run(self, op):
        try:
            step = next(op)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    value = None
                else:
                    value = self._send_http(step)
                step = op.send(value)
        except StopIteration as stop:
            return stop.value

    def _send_http(self, call: Call) -> httpx.Response:
        try:
            return self._http.request(call.method, call.path, **_httpx_args(call))
        except httpx.TimeoutException as exc:
            raise TransferRankTimeoutError(f"{call.method} {call.path}: no answer within {self.timeout} s") from exc
        except httpx.TransportError as exc:
            raise TransferRankConnectionError(f"cannot reach {self.url}: {exc}") from exc

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_Endpoints):
    """The same methods as ``Client``, each returning an awaitable (``httpx.AsyncClient``)."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 retries: int = 3, polling: Polling | None = None, headers: dict | None = None,
                 transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(url, api_key, timeout=timeout, retries=retries, polling=polling, headers=headers)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=timeout, transport=transport)

    async def _run(self, op):
        try:
            step = next(op)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    value = None
                else:
                    value = await self._send_http(step)
                step = op.send(value)
        except StopIteration as stop:
            return stop.value

    async def _send_http(self, call: Call) -> httpx.Response:
        try:
            return await self._http.request(call.method, call.path, **_httpx_args(call))
        except httpx.TimeoutException as exc:
            raise TransferRankTimeoutError(f"{call.method} {call.path}: no answer within {self.timeout} s") from exc
        except httpx.TransportError as exc:
            raise TransferRankConnectionError(f"cannot reach {self.url}: {exc}") from exc

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
