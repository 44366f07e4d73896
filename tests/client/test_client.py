"""The Python client against a real service on a free port (HTTP over a socket), and the
async client in-process over ASGI. No mocks."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from live_server import FAST_MODELS, LiveServer

import transferrank
from conftest import csv_bytes, make_texts
from transferrank import (
    AsyncClient,
    AuthError,
    Client,
    Dataset,
    JobFailedError,
    NotFoundError,
    PermissionDeniedError,
    Ranking,
    TransferRankConnectionError,
    TransferRankError,
    ValidationError,
)


@pytest.fixture
def tr(live):
    with Client(live.url) as c:
        yield c


def test_client_imports_without_server_extras():
    """``import transferrank`` (and a Client) needs httpx + numpy only: no fastapi/torch/sqlalchemy/pandas/sklearn."""
    code = ("import sys, transferrank; c = transferrank.Client('http://127.0.0.1:9'); "
            "bad = [m for m in ('fastapi', 'torch', 'sqlalchemy', 'pandas', 'sklearn', 'app') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


def test_upload_from_dataframe_path_and_arrays(tr, tmp_path):
    texts, labels = make_texts(30, 3, seed=1)
    ds = tr.upload(pd.DataFrame({"text": texts, "label": labels}), name="from-df")
    assert isinstance(ds, Dataset) and ds.created is True
    assert (ds.name, ds.n_examples, ds.n_classes, ds.kind) == ("from-df", 30, 3, "text")
    path = tmp_path / "same.csv"
    path.write_bytes(csv_bytes(texts, labels))
    again = tr.upload(path)  # same content: the same dataset, 200
    assert again.id == ds.id and again.created is False
    arrays = tr.upload((texts, np.asarray(labels)))
    assert arrays.id == ds.id
    X = np.random.default_rng(0).normal(size=(24, 6))
    feats = tr.upload((X, np.arange(24) % 2), name="feats")
    assert feats.kind == "features" and feats.n_classes == 2
    df_feats = tr.upload(pd.DataFrame(np.c_[X, np.arange(24) % 2], columns=list("abcdef") + ["label"]))
    assert df_feats.kind == "features" and df_feats.n_examples == 24
    assert tr.dataset(ds.id).sha256 == ds.sha256
    assert ds.id in {d.id for d in tr.datasets()}
    with pytest.raises(ValueError, match="label"):
        tr.upload(pd.DataFrame({"text": texts}))


def test_rank_waits_for_the_job_with_progress_then_hits_the_cache(tr):
    texts, labels = make_texts(45, 3, seed=2)
    df = pd.DataFrame({"text": texts, "label": labels})
    seen = []
    ranking = tr.rank(df, candidates="models", sources=FAST_MODELS, progress=lambda p, m: seen.append((p, m)))
    assert isinstance(ranking, Ranking) and ranking.status == "done" and ranking.job  # it was a 202 + job
    assert seen and seen[-1][0] == 1.0 and all(0.0 <= p <= 1.0 for p, _ in seen)
    assert [r["rank"] for r in ranking.ranking] == [1, 2]
    assert set(ranking.sources) == set(FAST_MODELS) and ranking.best == ranking.ranking[0]["source"]
    frame = ranking.to_pandas()
    assert list(frame["source"]) == ranking.sources and {"source", "rank", "score", "logme"} <= set(frame.columns)
    assert frame["score"].is_monotonic_decreasing
    again = tr.rank(df, candidates="models", sources=FAST_MODELS, progress=False)  # cached: 200 at once
    assert again.job is None and again.raw["computed"] == 0 and again.sources == ranking.sources
    assert tr.ranking(ranking.id).sources == ranking.sources
    queued = tr.rank(ranking.target["id"], sources=FAST_MODELS, estimators=["logme"], wait=False)
    assert queued.status in ("done", "queued")


def test_rank_features_separates_a_good_candidate(tr):
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    good = np.eye(3)[y] * 3 + rng.normal(scale=0.3, size=(90, 3))
    noise = rng.normal(size=(90, 5))
    ranking = tr.rank((dict(good=good, noise=noise), y), estimators=["logme", "hscore"])
    assert ranking.best == "good" and ranking.scores["good"] > ranking.scores["noise"]


def test_errors_are_typed_and_carry_the_detail(tr):
    with pytest.raises(NotFoundError) as e:
        tr.dataset("no-such-id")
    assert e.value.status_code == 404 and "no-such-id" in e.value.detail
    texts, labels = make_texts(20, 2)
    with pytest.raises(ValidationError) as e:
        tr.rank((texts, labels), estimators=["nope"])
    assert "unknown estimator" in e.value.detail and isinstance(e.value, ValueError)
    with pytest.raises(ValidationError, match="at least 2"):
        tr.upload((["one text"] * 3, [0, 0, 0]))
    with pytest.raises(NotFoundError):
        tr.job("nope")
    with pytest.raises(TransferRankConnectionError):
        Client("http://127.0.0.1:9", retries=0).health()


def test_feedback_and_transfer_matrix(tr):
    texts, labels = make_texts(30, 3, seed=5)
    ds = tr.upload((texts, labels), name="fb-target")
    tr.rank(ds, sources=FAST_MODELS, estimators=["logme"], progress=False)
    fb = tr.feedback("glove-6b-50d", ds.id, "accuracy", 0.81)
    assert (fb.source, fb.target, fb.metric, fb.value) == ("glove-6b-50d", ds.id, "accuracy", 0.81)
    assert [f.value for f in tr.list_feedback(target=ds.id)] == [0.81]
    with pytest.raises(NotFoundError, match="no source task or model"):
        tr.feedback("unknown-model", ds.id, "accuracy", 0.5)
    m = tr.transfer_matrix(estimator="logme")
    assert {"glove-6b-50d", "tfidf-svd"} <= set(m["sources"])
    text = tr.transfer_matrix(estimator="logme", format="csv")
    assert text.splitlines()[0].startswith("estimator,source")


def test_sources_and_estimators(tr):
    names = {s.name for s in tr.sources()}
    assert set(FAST_MODELS) <= names
    est = tr.estimators()
    assert "logme" in {e["name"] for e in est["estimators"]}


def test_api_key_from_argument_or_environment(tmp_path, monkeypatch):
    from app.services import keys as keys_svc

    server = LiveServer(tmp_path / "auth").start()
    try:
        _info, admin_key = keys_svc.create(server.ctx, "admin", ["admin"])
        _info, read_key = keys_svc.create(server.ctx, "reader", ["read"])
        monkeypatch.delenv("TRANSFERRANK_API_KEY", raising=False)
        with pytest.raises(AuthError, match="requires an API key"):
            Client(server.url).sources()
        assert Client(server.url, api_key=admin_key).sources()
        monkeypatch.setenv("TRANSFERRANK_API_KEY", read_key)
        reader = Client(server.url)
        assert reader.api_key == read_key and reader.sources()
        with pytest.raises(PermissionDeniedError, match="lacks the 'write' scope"):
            reader.upload((["a b", "c d"], [0, 1]))
        created = Client(server.url, api_key=admin_key).create_key("bob", ["read"])
        assert created["key"].startswith("trk_")
    finally:
        server.stop()


def test_async_client_against_the_live_service(live):
    texts, labels = make_texts(36, 3, seed=7)

    async def main():
        async with AsyncClient(live.url) as tr:
            ds = await tr.upload((texts, labels), name="async")
            ranking = await tr.rank(ds, sources=FAST_MODELS, estimators=["logme"], progress=False)
            job = await tr.job(ranking.job) if ranking.job else None
            with pytest.raises(NotFoundError):
                await tr.ranking("missing")
            return ds, ranking, job

    ds, ranking, job = asyncio.run(main())
    assert ranking.target["id"] == ds.id and ranking.status == "done"
    assert job is None or job.status == "done"


def test_async_client_in_process_over_asgi(settings_factory, tmp_path):
    from app.main import create_app
    from app.services.context import Context

    ctx = Context.open(settings_factory(tmp_path / "asgi"))
    try:
        app = create_app(ctx=ctx)
        app.state.ctx = ctx  # no lifespan over ASGITransport: hand the context over directly
        rng = np.random.default_rng(1)
        y = np.arange(40) % 2

        async def main():
            async with AsyncClient("http://transferrank", transport=httpx.ASGITransport(app=app)) as tr:
                return await tr.rank((rng.normal(size=(40, 4)) + y[:, None], y), estimators=["logme"])

        ranking = asyncio.run(main())
        assert ranking.sources == ["features"] and ranking.ranking[0]["scores"]["logme"] is not None
    finally:
        ctx.close()


def test_job_failure_is_raised(live, tr):
    """A job that fails surfaces as JobFailedError with the job's error text."""
    import time

    from app.db.models import Job

    with live.ctx.Session.begin() as s:
        job = live.ctx.jobs.create(s, "test", message="queued")
        job_id = job.id

    def boom(progress):
        progress(0.5, "half way")
        time.sleep(0.2)
        raise ValueError("the input had no usable rows")

    live.ctx.jobs.submit(job_id, boom)
    with pytest.raises(JobFailedError, match="no usable rows") as e:
        tr.wait_job(job_id, progress=False, timeout=30)
    assert e.value.job["status"] == "failed"
    with live.ctx.Session() as s:
        assert s.get(Job, job_id).status == "failed"


def test_exceptions_share_a_base():
    for cls in (AuthError, NotFoundError, ValidationError, transferrank.RateLimitError, JobFailedError):
        assert issubclass(cls, TransferRankError)


def test_readme_notebook_snippet_ranks_a_dataframe_in_five_lines(tmp_path, monkeypatch):
    """The README's "Python client" snippet, verbatim but for the URL, against a live service
    (the two slow model candidates disabled so the test stays short)."""
    import re

    from sqlalchemy import update

    from app.db.models import EncoderRow

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Python client"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    lines = [ln for ln in code.splitlines() if ln.strip()]
    assert len(lines) <= 5
    server = LiveServer(tmp_path / "readme").start()
    try:
        with server.ctx.Session.begin() as s:
            s.execute(update(EncoderRow).where(EncoderRow.name.not_in(FAST_MODELS)).values(enabled=False))
        texts, labels = make_texts(30, 2, seed=3)
        monkeypatch.chdir(tmp_path)
        pd.DataFrame({"text": texts, "label": labels}).to_csv("reviews.csv", index=False)
        scope: dict = {}
        exec(compile(code.replace("http://127.0.0.1:8000", server.url), "README", "exec"), scope)
        frame = scope["ranking"].to_pandas()
        assert list(frame["rank"]) == [1, 2] and set(frame["source"]) == set(FAST_MODELS)
        assert {"source", "rank", "score"} <= set(frame.columns)
    finally:
        server.stop()


def test_job_and_ranking_lists_and_cancel(live, tr):
    """GET /v1/jobs, DELETE /v1/jobs/{id}, GET /v1/rankings through the client (skipped on a
    service without them)."""
    import time

    if "/v1/jobs" not in httpx.get(f"{live.url}/openapi.json").json()["paths"]:
        pytest.skip("this service has no GET /v1/jobs yet")
    texts, labels = make_texts(30, 3, seed=13)
    ranking = tr.rank((texts, labels), sources=FAST_MODELS, estimators=["logme"], progress=False)
    listed = tr.rankings(target=ranking.target["id"])
    assert ranking.id in {r.id for r in listed}
    with live.ctx.Session.begin() as s:
        job_id = live.ctx.jobs.create(s, "test", message="queued").id

    def slow(progress):
        for i in range(400):
            progress(i / 400, f"step {i}")
            time.sleep(0.05)
        return {}

    live.ctx.jobs.submit(job_id, slow)
    assert job_id in {j.id for j in tr.jobs(limit=1000)}
    cancelled = tr.cancel_job(job_id)
    assert cancelled.status == "cancelled"
    with pytest.raises(JobFailedError, match="cancelled"):
        tr.wait_job(job_id, progress=False, timeout=30)
    assert job_id in {j.id for j in tr.jobs(status="cancelled", limit=1000)}
