"""Ray backend against a real local Ray instance (CPU). Deselect with ``-m 'not ray'``."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ray = pytest.importorskip("ray")

from test_workers import chatterbot_texts  # noqa: E402

import estimators  # noqa: E402
from app.workers.local import LocalBackend  # noqa: E402
from app.workers.ray_backend import EncoderLoadError, RayBackend  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def ray_backend():
    # 3 logical CPUs: the shared 2-actor backend + the 1-actor backend of the retries-exhausted test
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False, namespace="transferrank-tests")
    backend = RayBackend(num_actors=2, max_restarts=2, max_task_retries=2, poll_interval=0.1)
    try:
        yield backend
    finally:
        backend.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def local_backend():
    b = LocalBackend(max_workers=2)
    yield b
    b.shutdown()


@pytest.fixture(scope="module")
def data():
    texts, labels = chatterbot_texts(25)
    return texts, labels


def test_describe_reports_cpu_actors(ray_backend):
    d = ray_backend.describe()
    assert d["backend"] == "ray" and d["workers"] == 2 and d["gpus"] == 0
    assert d["devices"] == ["cpu"] and d["actor_options"]["num_cpus"] == 1
    pids = {a["pid"] for a in d["actors"]}
    assert len(pids) == 2 and os.getpid() not in pids  # real separate worker processes


def test_same_embeddings_and_scores_as_local(ray_backend, local_backend, data):
    """A models ranking's inputs: the candidate encoders give the same features on both backends
    (bit for bit for MiniLM and GloVe), hence the same estimator scores. tfidf-svd keeps ~n
    components, whose trailing near-degenerate singular vectors depend on the BLAS thread count
    (1 per actor vs 2 here): the features may rotate in that subspace, the scores do not move."""
    texts, labels = data
    names = ["minilm-l6", "glove-6b-50d", "tfidf-svd"]
    progress = {n: [] for n in names}
    ray_futs = {n: ray_backend.submit_embed(n, texts, progress=progress[n].append) for n in names}
    loc_futs = {n: local_backend.submit_embed(n, texts) for n in names}
    for n in names:
        R, L = ray_futs[n].result(timeout=240), loc_futs[n].result(timeout=240)
        assert R.dtype == np.float32 and R.flags.writeable and R.shape == L.shape
        if n != "tfidf-svd":
            assert np.array_equal(R, L), n
        for est in ("logme", "hscore"):
            assert estimators.score(est, R, labels) == pytest.approx(estimators.score(est, L, labels), rel=1e-8)
        assert progress[n][-1] == 1.0


def test_bad_encoder_fails_the_job_not_the_actor(ray_backend):
    pids = sorted(ray_backend.actor_pids())
    with pytest.raises(EncoderLoadError, match="could not be loaded.*nonexistent"):
        ray_backend.submit_embed("/nonexistent/model", ["x"]).result(timeout=60)
    ok = ray_backend.submit_embed("glove-6b-50d", ["still serving"]).result(timeout=60)
    assert ok.shape == (1, 50)
    assert sorted(ray_backend.actor_pids()) == pids  # no actor was lost or restarted


def test_killed_worker_mid_extraction_is_retried(ray_backend, local_backend, data):
    """SIGKILL the worker processes while MiniLM runs: Ray restarts the actor, re-runs the call,
    and the job returns the same features (hence the same scores) as an undisturbed run."""
    texts, labels = data
    texts = texts * 2
    labels = np.concatenate([labels, labels])
    before = ray_backend.actor_pids()
    progress = []
    fut = ray_backend.submit_embed("minilm-l6", texts, progress=progress.append)
    deadline = time.monotonic() + 120
    while not progress or progress[-1] <= 0.0:  # the forward passes have started
        assert time.monotonic() < deadline and not fut.done(), "job never reported progress"
        time.sleep(0.05)
    assert progress[-1] < 1.0
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    X = fut.result(timeout=240)
    after = ray_backend.actor_pids()
    assert not set(after) & set(before)  # the actors were restarted in new processes
    ref = local_backend.submit_embed("minilm-l6", texts).result(timeout=240)
    assert np.array_equal(X, ref)
    assert estimators.score("logme", X, labels) == estimators.score("logme", ref, labels)


def test_train_esm_on_ray_reports_progress(ray_backend):
    from app.workers.base import EsmTrainRequest

    texts, labels = chatterbot_texts(6, topics=("food", "sports"))
    req = EsmTrainRequest("minilm-l6", texts, labels.tolist(), epochs=1, max_length=16, batch_size=4,
                          train_layers="top-1", map_fit="lstsq", options={"embed_max_length": 32})
    seen = []
    res = ray_backend.submit_train_esm(req, progress=seen.append).result(timeout=180)
    assert res.weight.shape == (384, 384) and res.base_embeddings.shape == (len(texts), 384)
    assert res.metrics["n_classes"] == 2 and res.metrics["map_r2"] > 0.9
    assert seen[-1] == 1.0 and len(seen) >= 2
    with pytest.raises(ValueError, match="transformers"):
        ray_backend.submit_train_esm(EsmTrainRequest("glove-6b-50d", ["a", "b"], [0, 1])).result(timeout=60)


def test_worker_dying_after_retries_fails_the_job_with_the_reason(ray_backend):
    """No retries left: the Future fails with a clear reason, and the pool replaces the actor."""
    b = RayBackend(num_actors=1, max_restarts=0, max_task_retries=0, poll_interval=0.1)
    try:
        (pid,) = b.actor_pids()
        fut = b.submit_embed("minilm-l6", ["a text to embed"] * 50)  # loading MiniLM alone takes > 1 s
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match="died and the retries are used up"):
            fut.result(timeout=120)
        assert b.submit_embed("glove-6b-50d", ["served by the replacement"]).result(timeout=120).shape == (1, 50)
        assert b.actor_pids() != [pid]
    finally:
        b.shutdown()


def test_score_esms_on_ray_actors_equals_local(ray_backend, local_backend, tmp_path):
    """A chunk of ESM scores computed by a Ray actor from blob paths equals the local pool's."""
    import io as _io

    from app.workers.scoring import EsmScoreRequest
    from estimators.esm import EmbeddingSpaceMap
    from estimators.esm_stats import TargetStats

    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(80, 6)), rng.integers(0, 2, 80)
    buf = _io.BytesIO()
    np.savez(buf, **TargetStats.from_data(X, y).to_arrays())
    stats_path = tmp_path / "stats.npz"
    stats_path.write_bytes(buf.getvalue())
    paths = [str(EmbeddingSpaceMap(rng.normal(size=(6, 6)), rng.normal(size=6)).save(tmp_path / f"e{i}.safetensors"))
             for i in range(3)]
    req = EsmScoreRequest(str(stats_path), paths, ["esm_logme", "esm_etran_lda"], device="cpu")
    on_ray = ray_backend.submit_score_esms(req).result(timeout=300)
    local = local_backend.submit_score_esms(req).result(timeout=300)
    assert on_ray.shape == (3, 2)
    np.testing.assert_allclose(on_ray, local, rtol=1e-12)
