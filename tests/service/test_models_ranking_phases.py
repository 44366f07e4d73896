"""Models rankings at scale: per-phase progress on the job, timings in the result, N-LEEP's mixture
fitted once per ranking (the bootstrap reuses its posteriors), memory given back after jobs."""
from __future__ import annotations

import os

import numpy as np
import pytest

import estimators
from app.core import memory
from app.services import rankings
from conftest import csv_bytes, make_texts, upload, wait_job
from estimators.uncertainty import resamples, rescore

ENCODERS = ["glove-6b-50d", "tfidf-svd"]


def _recording_jobs(client):
    """Wrap the job runner's progress sink: every (fraction, message) a job reports."""
    jobs = client.app.state.ctx.jobs
    seen: list[tuple[float, str | None]] = []
    original = jobs.progress

    def progress(job_id, fraction, message=None):
        seen.append((float(fraction), message))
        return original(job_id, fraction, message)

    jobs.progress = progress
    return seen


def test_models_ranking_reports_each_phase_on_its_job(client):
    seen = _recording_jobs(client)
    did = upload(client, csv_bytes(*make_texts(150, 3)), "t.csv").json()["id"]
    r = client.post("/v1/rankings", json={"target": did, "candidates": "models", "sources": ENCODERS,
                                          "estimators": ["logme", "nleep"], "bootstrap": 20})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job"])
    assert job["status"] == "done" and job["progress"] == 1.0
    messages = [m for _, m in seen if m]
    # extraction, per encoder
    assert messages[0] == "extracting features with glove-6b-50d, tfidf-svd"
    assert messages[1].startswith("extracting features: 0/2 encoders ready; waiting: ")
    assert any(m.startswith("extracting features: 2/2 encoders ready") for m in messages)
    # scoring, per estimator x candidate, in order
    cells = [f"scoring {e} on {c} (score {i * 2 + j + 1}/4)" for i, c in enumerate(sorted(ENCODERS))
             for j, e in enumerate(["logme", "nleep"])]
    assert [m for m in messages if m.startswith("scoring ")] == cells
    # the bootstrap, per scored cell
    boot = [m for m in messages if m.startswith("bootstrap: ")]
    assert [m for m in boot if "B = 20" in m] == [f"bootstrap: {e} on {c}, B = 20 (score {i * 2 + j + 1}/4)"
                                               for i, c in enumerate(sorted(ENCODERS))
                                               for j, e in enumerate(["logme", "nleep"])]
    # LogME's resamples report every BOOTSTRAP_BLOCK of them; N-LEEP's are one vectorised step
    assert "bootstrap: logme on glove-6b-50d, 10/20 resamples (score 1/4)" in boot
    assert "bootstrap: logme on tfidf-svd, 20/20 resamples (score 3/4)" in boot
    assert messages[-1] == "ranking done"
    order = [next(i for i, m in enumerate(messages) if m.startswith(p))
             for p in ("extracting", "scoring", "bootstrap", "ranking done")]
    assert order == sorted(order)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions)  # progress never goes back
    first_scoring = next(f for f, m in seen if m and m.startswith("scoring "))
    assert first_scoring == pytest.approx(rankings.MODELS_EXTRACTION)
    # timings in the ranking
    out = client.get(f"/v1/rankings/{r.json()['id']}").json()
    t = out["timings"]
    assert set(t["extraction_s"]) == set(ENCODERS) and t["extraction_wall_s"] > 0
    assert set(t["scoring_s"]) == {"logme", "nleep"} and all(v >= 0 for v in t["scoring_s"].values())
    assert t["bootstrap_s"] >= 0


def test_cached_features_skip_extraction_timings(client):
    did = upload(client, csv_bytes(*make_texts(90, 3)), "t.csv").json()["id"]
    body = {"target": did, "candidates": "models", "sources": ENCODERS, "estimators": ["logme"], "bootstrap": 0}
    r = client.post("/v1/rankings", json=body)
    assert wait_job(client, r.json()["job"])["status"] == "done"
    ctx = client.app.state.ctx
    spec = rankings.RankingSpec(target=did, candidates="models", sources=ENCODERS, estimators=["hscore"],
                                bootstrap=0)
    seen = []
    out = rankings.compute(ctx, spec, lambda f, m=None: seen.append((f, m)))
    assert "extraction_s" not in out["timings"]  # features came from the cache
    assert set(out["timings"]["scoring_s"]) == {"hscore"}
    assert [m for _, m in seen if m and m.startswith("scoring")] == [
        "scoring hscore on glove-6b-50d (score 1/2)", "scoring hscore on tfidf-svd (score 2/2)"]


def test_nleep_point_score_and_bootstrap_use_one_mixture_fit(make_client, monkeypatch):
    """The ranking's N-LEEP equals the library's, its bootstrap draws equal ``rescore("nleep")``'s,
    and the mixture is fitted once per candidate (not again for the bootstrap). Worker threads
    (no worker processes), so that the fits are counted in this process."""
    import estimators.nleep as nleep_mod

    client = make_client(worker_processes=0)
    did = upload(client, csv_bytes(*make_texts(120, 3)), "t.csv").json()["id"]
    ctx = client.app.state.ctx
    fits = []
    real = nleep_mod._posteriors

    def counting(*a, **k):
        fits.append(1)
        return real(*a, **k)

    monkeypatch.setattr(nleep_mod, "_posteriors", counting)
    spec = rankings.RankingSpec(target=did, candidates="models", sources=["glove-6b-50d"],
                                estimators=["nleep"], bootstrap=30)
    out = rankings.compute(ctx, spec)
    assert len(fits) == 1
    from app.services import datasets as datasets_svc
    from app.services import features as features_svc

    ds = datasets_svc.get(ctx, did)
    X = features_svc.get_features(ctx, ds, "glove-6b-50d").astype(np.float64)
    y = rankings._labels(ctx, ds)
    item = out["ranking"][0]
    assert item["scores"]["nleep"] == pytest.approx(estimators.score("nleep", X, y), rel=1e-9)
    idx = resamples(y, 30, seed=0)
    P = nleep_mod.nleep_posteriors(X, y)
    np.testing.assert_allclose(rankings.rescore_leep(P, y, idx), rescore("nleep", X, y, idx, {}), rtol=1e-9, atol=1e-15)


def test_release_returns_freed_heap_pages_to_the_os():
    if memory.rss_bytes() is None:
        pytest.skip("no /proc here")
    if memory._malloc_trim() is None:
        pytest.skip("not glibc: nothing to trim")
    memory.release()
    # ~160 MB in 40 KB blocks (below glibc's mmap threshold: they live in the heap), each followed
    # by a small block that stays: freeing the large ones leaves holes only malloc_trim gives back
    pairs = [(np.ones(5000), np.ones(600)) for _ in range(4000)]
    keep = [small for _, small in pairs]
    grown = memory.rss_bytes()
    del pairs
    held = memory.rss_bytes()
    assert memory.release() is True
    after = memory.rss_bytes()
    assert grown is not None and held is not None and after is not None
    assert after < held - 100 * 2**20, (grown, held, after)
    assert len(keep) == 4000


def test_configure_malloc_leaves_an_operators_limit_alone(monkeypatch):
    with pytest.raises(ValueError, match="arenas"):
        memory.configure_malloc(0)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert memory.configure_malloc() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert memory.configure_malloc() is False


_ARENAS = """
import ctypes, sys, threading
if sys.argv[1] == "service":
    import app  # sets the limit (app.core.memory.configure_malloc)
kept = []
t = threading.Thread(target=lambda: kept.extend(bytes(40000) for _ in range(100)))
t.start(); t.join()
ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


def test_importing_the_service_makes_threads_allocate_from_the_main_heap(tmp_path):
    """The mechanism behind ``configure_malloc``: a thread started after ``import app`` allocates
    from the main arena -- the one ``malloc_trim`` returns entirely -- not from an arena of its own."""
    import ctypes.util
    import subprocess
    import sys
    from pathlib import Path

    lib = ctypes.util.find_library("c")
    if not lib or not hasattr(ctypes.CDLL(lib), "malloc_stats") or not lib.startswith("libc.so"):
        pytest.skip("not glibc")
    root = Path(__file__).resolve().parents[2]
    script = tmp_path / "arenas.py"
    script.write_text(_ARENAS)
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    arenas = {}
    for mode in ("service", "plain"):
        done = subprocess.run([sys.executable, str(script), mode], env={**env, "PYTHONPATH": str(root)},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        arenas[mode] = sum(1 for line in done.stderr.splitlines() if line.startswith("Arena "))
    assert arenas == {"service": 1, "plain": 2}


def test_vectorised_leep_resamples_equal_the_per_resample_loop():
    from estimators.leep import leep_from_probs

    rng = np.random.default_rng(4)
    y = rng.permutation(np.arange(900) % 7)
    P = rng.dirichlet(np.full(30, 0.3), size=900)
    idx = resamples(y, 25, seed=1)
    loop = np.array([leep_from_probs(P[rows], y[rows], 7) for rows in idx])
    np.testing.assert_allclose(rankings.rescore_leep(P, y, idx), loop, rtol=1e-12)


def test_job_runner_releases_memory_only_after_a_job_that_grew_the_process(monkeypatch):
    from app.services import jobs

    if memory.rss_bytes() is None:
        pytest.skip("no /proc here")
    calls = []
    monkeypatch.setattr(memory, "release", lambda: calls.append(1) or True)
    now = memory.rss_bytes()
    jobs.JobRunner._release_memory("small", now)
    assert calls == []
    jobs.JobRunner._release_memory("large", now - jobs.RELEASE_AFTER_BYTES - 2**20)
    assert calls == [1]
