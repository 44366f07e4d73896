"""Shared fixtures for the service tests.

- ``db_url``: parametrised over SQLite (always) and PostgreSQL (when ``TEST_DATABASE_URL`` is
  set); each PostgreSQL test gets its own fresh schema (dropped afterwards), so tests never
  see each other's rows even when they share a server.
- ``make_client``: a FastAPI TestClient on a fresh data dir with fast encoders (GloVe as the
  base encoder, no demo catalogue) unless told otherwise.
"""
from __future__ import annotations

import contextlib
import io
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFERRANK_LOG_LEVEL", "WARNING")

PG_URL = os.environ.get("TEST_DATABASE_URL")
FAST_BASE = "glove-6b-50d"

WORDS = {
    0: "film movie actor scene plot director cinema screen drama comedy".split(),
    1: "food meal dinner tasty recipe kitchen flavour sauce bread cheese".split(),
    2: "football match goal team player coach league season score stadium".split(),
    3: "computer software code program data network server memory chip keyboard".split(),
}
FILLER = "the a of and to in is it that with".split()


def make_texts(n: int, n_classes: int = 3, seed: int = 0, vocab_shift: int = 0) -> tuple[list[str], list[int]]:
    """Short synthetic sentences whose words depend on the class (so encoders separate them)."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        c = i % n_classes
        topic = WORDS[(c + vocab_shift) % len(WORDS)]
        words = list(rng.choice(topic, 4)) + list(rng.choice(FILLER, 3))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(c)
    return texts, labels


def csv_bytes(texts, labels, extra: dict | None = None) -> bytes:
    import pandas as pd

    df = pd.DataFrame({"text": texts, "label": labels, **(extra or {})})
    return df.to_csv(index=False).encode()


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _pg_schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_url():
    if not PG_URL:
        pytest.skip("TEST_DATABASE_URL is not set")
    from sqlalchemy import create_engine, text

    schema = f"tr_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _pg_schema_url(PG_URL, schema)
    finally:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def settings_factory(tmp_path):
    from app.core.config import Settings

    def make(data_dir: Path | None = None, **overrides):
        overrides.setdefault("base_encoder", FAST_BASE)
        overrides.setdefault("seed_demo", False)
        overrides.setdefault("train_demo_esms", False)
        overrides.setdefault("log_level", "WARNING")
        return Settings.from_env({}, data_dir=data_dir or (tmp_path / "data"), **overrides)

    return make


@pytest.fixture
def make_client(settings_factory):
    from fastapi.testclient import TestClient

    from app.main import create_app

    clients = []

    def make(data_dir: Path | None = None, **overrides):
        client = TestClient(create_app(settings_factory(data_dir, **overrides)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()


def wait_job(client, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def rank(client, body: dict, timeout: float = 120.0) -> dict:
    """POST /v1/rankings and, if queued, wait for the job; returns the finished ranking."""
    r = client.post("/v1/rankings", json=body)
    assert r.status_code in (200, 202), r.text
    out = r.json()
    if r.status_code == 202:
        job = wait_job(client, out["job"], timeout)
        assert job["status"] == "done", job
        out = client.get(f"/v1/rankings/{out['id']}").json()
    assert out["status"] == "done", out
    return out


def upload(client, content: bytes, filename: str = "data.csv", name: str | None = None):
    data = {"name": name} if name else None
    return client.post("/v1/datasets", files={"file": (filename, content)}, data=data)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A real service on a free port (uvicorn in a thread, SQLite, fast encoders): ``.url``, ``.ctx``."""
    from live_server import LiveServer

    server = LiveServer(tmp_path_factory.mktemp("live") / "data").start()
    yield server
    server.stop()


@contextlib.contextmanager
def serving(exe: str | Path, data_dir: Path, *, env: dict[str, str], cwd: Path | None = None,
            timeout: float = 90.0) -> Iterator[str]:
    """Run ``<exe> serve`` on a free local port until /healthz answers; yields the base URL and
    stops the server afterwards (its stderr tail is shown if it dies while starting)."""
    import json
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(exe), "serve", "--port", str(port), "--data-dir", str(data_dir)], cwd=cwd,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                    assert json.loads(r.read()) == {"status": "ok"}
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
                assert time.monotonic() < deadline, "serve did not come up"
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
