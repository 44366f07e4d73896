"""Local worker backend, backend selection, ESM training job, and the docker-compose stack file."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from app.workers import backend_config, get_backend  # noqa: E402
from app.workers.base import EsmTrainRequest  # noqa: E402
from app.workers.local import EncoderCache, LocalBackend  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def chatterbot_texts(n_per_topic: int, topics=("food", "sports", "money", "science")):
    """Real utterances (PyPI chatterbot-corpus, BSD) with their topic as the label."""
    import chatterbot_corpus
    import yaml

    data = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    texts, labels = [], []
    for k, topic in enumerate(topics):
        conv = yaml.safe_load((data / f"{topic}.yml").read_text(encoding="utf-8"))["conversations"]
        utterances = [str(u) for c in conv for u in c][:n_per_topic]
        texts += utterances
        labels += [k] * len(utterances)
    return texts, np.asarray(labels)


@pytest.fixture(scope="module")
def backend():
    b = LocalBackend(max_workers=2)
    yield b
    b.shutdown()


# ----------------------------------------------------------------------------- configuration
def test_backend_config_from_env(monkeypatch):
    monkeypatch.delenv("TRANSFERRANK_RAY_ADDRESS", raising=False)
    monkeypatch.delenv("TRANSFERRANK_WORKERS", raising=False)
    assert backend_config() == {"kind": "local", "address": None, "workers": 2}
    monkeypatch.setenv("TRANSFERRANK_WORKERS", "3")
    assert backend_config()["workers"] == 3
    monkeypatch.setenv("TRANSFERRANK_RAY_ADDRESS", "127.0.0.1:6379")
    assert backend_config() == {"kind": "ray", "address": "127.0.0.1:6379", "workers": 3}
    monkeypatch.setenv("TRANSFERRANK_RAY_ADDRESS", "auto")
    assert backend_config()["kind"] == "ray"
    monkeypatch.delenv("TRANSFERRANK_WORKERS")
    assert backend_config() == {"kind": "ray", "address": "auto", "workers": None}  # sized by the cluster
    monkeypatch.setenv("TRANSFERRANK_WORKERS", "3")
    monkeypatch.setenv("TRANSFERRANK_RAY_ADDRESS", "not-an-address")
    with pytest.raises(ValueError, match="host:port"):
        backend_config()
    monkeypatch.setenv("TRANSFERRANK_RAY_ADDRESS", "")
    monkeypatch.setenv("TRANSFERRANK_WORKERS", "0")
    with pytest.raises(ValueError, match="TRANSFERRANK_WORKERS"):
        backend_config()


def test_backend_config_from_settings(monkeypatch):
    from app.core.config import Settings

    monkeypatch.setenv("TRANSFERRANK_RAY_ADDRESS", "auto")  # settings win over the environment
    s = Settings.from_env({"TRANSFERRANK_WORKERS": "4"})
    assert backend_config(s) == {"kind": "local", "address": None, "workers": 4}
    s = Settings.from_env({"TRANSFERRANK_RAY_ADDRESS": "head:6379", "TRANSFERRANK_WORKERS": "2"})
    assert backend_config(s) == {"kind": "ray", "address": "head:6379", "workers": 2}


def test_get_backend_local(monkeypatch):
    monkeypatch.delenv("TRANSFERRANK_RAY_ADDRESS", raising=False)
    monkeypatch.setenv("TRANSFERRANK_WORKERS", "3")
    b = get_backend()
    try:
        assert isinstance(b, LocalBackend)
        d = b.describe()
        assert d["backend"] == "local" and d["workers"] == 3 and d["devices"] == ["cpu"]
    finally:
        b.shutdown()


# ----------------------------------------------------------------------------- encoder cache
def test_encoder_cache_is_bounded_and_loads_once():
    calls = []
    lock = threading.Lock()

    def loader(name):
        with lock:
            calls.append(name)
        return object()

    cache = EncoderCache(capacity=2, loader=loader)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("a"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["a"] and len({id(r) for r in results}) == 1
    cache.get("b")
    cache.get("a")  # a is now most recent
    cache.get("c")  # evicts b
    assert cache.names() == ["a", "c"]
    with pytest.raises(ValueError):
        EncoderCache(capacity=0)


# ----------------------------------------------------------------------------- embedding
def test_local_embed_real_encoders(backend):
    texts, _ = chatterbot_texts(15)
    for name, dim in (("tfidf-svd", 256), ("glove-6b-50d", 50)):
        seen = []
        X = backend.submit_embed(name, texts, progress=seen.append).result(timeout=120)
        assert X.shape == (len(texts), dim) and X.dtype == np.float32
        assert np.all(np.isfinite(X)) and np.linalg.norm(X, axis=1).max() > 0
        assert seen and seen[-1] == 1.0 and all(a <= b for a, b in zip(seen, seen[1:]))
        # the same request gives the same features (deterministic encoders)
        assert np.array_equal(X, backend.submit_embed(name, texts).result(timeout=120))


def test_local_embed_minilm_matches_encoder_and_runs_concurrently(backend):
    from app.encoders.registry import get_encoder

    texts, _ = chatterbot_texts(12)
    futures = [backend.submit_embed("minilm-l6", texts), backend.submit_embed("glove-6b-50d", texts)]
    X, G = (f.result(timeout=300) for f in futures)
    assert X.shape == (len(texts), 384) and G.shape == (len(texts), 50)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(X, get_encoder("minilm-l6").encode(texts))


def test_local_bad_encoder_fails_that_job_only(backend):
    bad = backend.submit_embed("/nonexistent/model-dir/x", ["a text"])
    with pytest.raises(ValueError, match="nonexistent"):
        bad.result(timeout=60)
    ok = backend.submit_embed("glove-6b-50d", ["still works"]).result(timeout=60)
    assert ok.shape == (1, 50)


def test_local_progress_sink_errors_do_not_fail_the_job(backend):
    def broken(_):
        raise RuntimeError("progress sink down")

    X = backend.submit_embed("glove-6b-50d", ["a", "b c"], progress=broken).result(timeout=60)
    assert X.shape == (2, 50)


# ----------------------------------------------------------------------------- ESM training
def test_esm_request_validation():
    from app.training.esm_job import train_esm

    with pytest.raises(ValueError, match="differ in length"):
        train_esm(EsmTrainRequest("minilm-l6", ["a", "b"], [0]))
    with pytest.raises(ValueError, match="2 classes"):
        train_esm(EsmTrainRequest("minilm-l6", ["a", "b"], [1, 1]))
    with pytest.raises(ValueError, match="map_fit"):
        train_esm(EsmTrainRequest("minilm-l6", ["a", "b"], [0, 1], map_fit="svd"))
    with pytest.raises(ValueError, match="unknown ESM training option"):
        train_esm(EsmTrainRequest("minilm-l6", ["a", "b"], [0, 1], options={"lr": 1}))
    with pytest.raises(ValueError, match="transformers"):
        train_esm(EsmTrainRequest("glove-6b-50d", ["a", "b"], [0, 1]))
    with pytest.raises(ValueError, match="local checkpoint"):
        train_esm(EsmTrainRequest("someorg/somemodel", ["a", "b"], [0, 1]))


def test_local_train_esm_end_to_end(backend):
    """Fine-tune MiniLM's top layer on a real 4-topic source, fit the ESM, check it is useful."""
    from estimators.esm import EmbeddingSpaceMap

    texts, labels = chatterbot_texts(16)
    req = EsmTrainRequest(
        "minilm-l6", texts, labels.tolist(), epochs=2, learning_rate=2e-4, max_length=32,
        batch_size=16, train_layers="top-1", map_fit="lstsq", options={"embed_max_length": 64},
    )
    seen = []
    res = backend.submit_train_esm(req, progress=seen.append).result(timeout=600)
    n = len(texts)
    assert res.weight.shape == (384, 384) and res.bias.shape == (384,)
    assert res.weight.dtype == np.float32 and res.base_embeddings.shape == (n, 384)
    assert seen[-1] == 1.0 and all(a <= b for a, b in zip(seen, seen[1:])) and len(seen) > 3
    m = res.metrics
    assert m["n_examples"] == n and m["n_classes"] == 4 and m["map_fit"] == "lstsq"
    assert all(isinstance(v, (int, float, str)) for v in m.values())  # flat scalars
    assert m["train_loss_final"] < m["train_loss_first"]  # it learnt something
    assert m["mean_cosine_base_vs_finetuned"] < 0.999  # fine-tuning moved the embeddings
    assert m["map_r2"] > 0.9  # with n < d the least-squares map is (near) exact on the source
    assert m["seconds_total"] >= m["seconds_finetune"] > 0
    # base embeddings are the registry encoder's features (what targets are embedded with)
    from app.encoders.registry import get_encoder

    ref = get_encoder("minilm-l6").encode(texts)
    np.testing.assert_allclose(res.base_embeddings, ref, atol=2e-5)
    esm = EmbeddingSpaceMap(res.weight, res.bias)
    assert esm.transform(res.base_embeddings).shape == (n, 384)


# ----------------------------------------------------------------------------- compose stack
def test_docker_compose_structure():
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"postgres", "ray-head", "ray-worker", "api"} <= set(services)
    pg = services["postgres"]
    assert "healthcheck" in pg and any("/var/lib/postgresql/data" in v for v in pg["volumes"])
    assert "healthcheck" in services["ray-head"]
    worker = services["ray-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices and "gpu" in devices[0]["capabilities"]
    assert "container_name" not in worker and "ports" not in worker  # --scale ray-worker=N works
    assert "ray-head:6379" in " ".join(map(str, worker["command"]))
    api = services["api"]
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert api["depends_on"]["ray-head"]["condition"] == "service_healthy"
    env = api["environment"]
    assert env["TRANSFERRANK_DATABASE_URL"].startswith("postgresql")
    assert env["TRANSFERRANK_RAY_ADDRESS"]
    cmd = " ".join(map(str, api["command"]))
    assert "migrate" in cmd and "serve" in cmd
    store = [v for v in api["volumes"] if v.startswith("store:")]
    assert store and set(doc["volumes"]) >= {"pgdata", "store"}
    assert (ROOT / "Dockerfile").is_file() and (ROOT / ".dockerignore").is_file()
    assert ".venv" in (ROOT / ".dockerignore").read_text()
