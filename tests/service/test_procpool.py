"""The local backend's worker processes: CPU-heavy numerics of jobs off the API process.

Real spawn-context processes throughout (no stand-ins): priority and BLAS threads as set by the
initialiser, results identical to the in-process computation, errors with their type and
message, a killed process failing its call and the pool recovering, queued calls cancelled,
and a ranking job through the API whose estimator cells run there -- with progress,
cancellation, and a dying worker turning into a failed job with a message (never a 500).
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np
import pytest

import estimators
from app.workers.base import Cancelled
from app.workers.local import LocalBackend, shared_pool
from app.workers.procpool import NumericPool, WorkerProcessDied, _blas_threads, _nice, _pid, _policy
from conftest import npz_bytes, upload, wait_job


@pytest.fixture(scope="module")
def pool():
    p = NumericPool(1, nice=5)
    yield p
    p.shutdown()


def _data(n=200, d=8, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    return np.eye(3)[y] @ rng.normal(size=(3, d)) + rng.normal(size=(n, d)), y


def test_calls_run_in_a_lower_priority_single_blas_thread_process(pool):
    assert pool.submit(_pid).result(timeout=120) != os.getpid()
    assert pool.submit(_nice).result() >= min(19, os.nice(0) + 5)
    assert pool.submit(_blas_threads).result() == 1
    X, y = _data()
    assert pool.submit(estimators.score, "logme", X, y).result() == estimators.score("logme", X, y)
    assert pool.submit(_policy).result() == os.sched_getscheduler(0)  # idle=False: the policy is kept


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies only")
def test_idle_pools_run_their_processes_under_sched_idle():
    p = NumericPool(1, nice=0, idle=True)
    try:
        assert p.submit(_policy).result(timeout=120) == os.SCHED_IDLE
        X, y = _data()
        assert p.submit(estimators.score, "logme", X, y).result() == estimators.score("logme", X, y)
    finally:
        p.shutdown()


def test_an_estimator_error_keeps_its_type_and_message(pool):
    X, y = _data()
    with pytest.raises(ValueError, match="no feature columns"):
        pool.submit(estimators.score, "logme", X[:, :0], y).result(timeout=60)
    assert pool.submit(_pid).result() > 0  # the pool is still usable


def test_a_killed_worker_fails_its_call_and_the_pool_recovers():
    p = NumericPool(1, nice=0)
    try:
        pid = p.submit(_pid).result(timeout=120)
        slow = p.submit(time.sleep, 30)
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerProcessDied, match="worker process ended"):
            slow.result(timeout=60)
        assert p.submit(_pid).result(timeout=120) not in (pid, os.getpid())  # a fresh process
    finally:
        p.shutdown()


def test_a_call_still_waiting_for_a_process_is_cancelled(pool, tmp_path):
    busy = [pool.submit(time.sleep, 0.3) for _ in range(4)]  # one running, the rest queued
    marker = tmp_path / "ran"
    late = pool.submit(marker.touch)
    assert late.cancel() and late.cancelled()
    with pytest.raises(CancelledError):
        late.result()
    for f in busy:
        f.result(timeout=60)
    time.sleep(0.3)
    assert not marker.exists()


def _esm_request(tmp_path, S=5, d=10):
    from app.workers.scoring import EsmScoreRequest
    from estimators.esm import EmbeddingSpaceMap
    from estimators.esm_stats import TargetStats

    rng = np.random.default_rng(3)
    X, y = _data(120, d, seed=4)
    paths = [str(EmbeddingSpaceMap(rng.normal(size=(d, d)) / math.sqrt(d), rng.normal(size=d))
                 .save(tmp_path / f"esm{i}.safetensors")) for i in range(S)]
    np.savez(tmp_path / "stats.npz", allow_pickle=False, **TargetStats.from_data(X, y).to_arrays())
    return EsmScoreRequest(stats_path=str(tmp_path / "stats.npz"), esm_paths=paths,
                           estimators=["esm_logme", "esm_hscore_shrinkage"], device="cpu")


def test_esm_chunks_score_the_same_in_processes_as_in_threads(tmp_path):
    req = _esm_request(tmp_path)
    threads, procs = LocalBackend(1, processes=0), LocalBackend(1, processes=1)
    try:
        seen: list[float] = []
        got = procs.submit_score_esms(req, progress=lambda f, m=None: seen.append(f)).result(timeout=120)
        want = threads.submit_score_esms(req).result(timeout=120)
        assert got.shape == (5, 2) and np.array_equal(got, want)
        assert seen == [1.0]

        def cancelled(f, m=None):
            raise Cancelled("job x was cancelled")

        with pytest.raises(Cancelled):
            procs.submit_score_esms(req, progress=cancelled).result(timeout=120)
        assert procs.describe()["processes"] == 1 and threads.describe()["processes"] == 0
    finally:
        threads.shutdown()
        procs.shutdown()


# ---------------------------------------------------------------------- ranking jobs through the API
def _ranking_end(client, ranking_id: str, timeout: float = 30.0):
    """GET the ranking once its row is final (the job's row turns first, the ranking's just after)."""
    deadline = time.monotonic() + timeout
    while True:
        out = client.get(f"/v1/rankings/{ranking_id}")
        if out.status_code != 200 or out.json()["status"] in ("done", "failed") or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


class _Recording(LocalBackend):
    """The real local backend; remembers which functions went to the worker processes and can
    slow each call down (a sleep in the worker process first) or make the process die."""

    def __init__(self, *a, delay: float = 0.0, die: bool = False, **kw):
        super().__init__(*a, **kw)
        self.calls: list[str] = []
        self.delay, self.die = delay, die

    def submit_call(self, fn, /, *args, **kwargs):
        self.calls.append(f"{fn.__module__}.{fn.__name__}")
        assert self._procs is not None
        if self.die:
            return self._procs.submit(os._exit, 3)
        if self.delay:
            self._procs.submit(time.sleep, self.delay).result()
        return super().submit_call(fn, *args, **kwargs)


def _target(client, n=60, sets=4):
    rng = np.random.default_rng(2)
    y = np.arange(n) % 3
    centres = rng.normal(size=(3, 5))
    arrays = {f"features_m{i}": i * np.eye(3)[y] @ centres + rng.normal(size=(n, 5)) for i in range(sets)}
    r = upload(client, npz_bytes(features=rng.normal(size=(n, 5)), labels=y, **arrays), "t.npz")
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


@pytest.fixture
def app_with(settings_factory, tmp_path):
    from fastapi.testclient import TestClient

    from app.main import create_app

    made = []

    def make(backend):
        # every ranking runs as a job (202): the tiniest synchronous cost limit
        c = TestClient(create_app(settings_factory(tmp_path / "data", sync_cost_limit=1e-9), backend=backend))
        c.__enter__()
        made.append(c)
        return c

    yield make
    for c in made:
        c.__exit__(None, None, None)


def test_a_ranking_job_scores_in_the_worker_processes_with_progress(app_with):
    backend = _Recording(2, processes=2)
    client = app_with(backend)
    did = _target(client)
    r = client.post("/v1/rankings", json={"target": did, "candidates": "models", "estimators": ["logme", "hscore"]})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job"])
    assert job["status"] == "done" and job["progress"] == 1.0, job
    out = client.get(f"/v1/rankings/{r.json()['id']}").json()
    assert out["status"] == "done" and out["ranking"][0]["source"] == "m3"
    assert backend.calls.count("estimators.score") == 10  # 5 feature sets x 2 estimators, all in processes
    assert all(np.isfinite(row["scores"]["logme"]) for row in out["ranking"])


def test_cancelling_a_ranking_job_stops_it_between_worker_calls(app_with):
    backend = _Recording(1, processes=1, delay=0.4)
    client = app_with(backend)
    did = _target(client, sets=8)
    r = client.post("/v1/rankings", json={"target": did, "candidates": "models",
                                          "estimators": ["logme", "hscore", "nce"]})
    job_id = r.json()["job"]
    deadline = time.monotonic() + 60
    while not backend.calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
    at_cancel = len(backend.calls)
    job = wait_job(client, job_id)
    time.sleep(1.0)
    assert job["status"] == "cancelled", job
    assert len(backend.calls) <= at_cancel + 1 < 27  # stopped at the next cell, not after all 27
    out = _ranking_end(client, r.json()["id"])
    assert out.status_code == 200 and out.json()["status"] == "failed"


def test_a_dying_worker_process_fails_the_job_with_a_message_not_a_500(app_with):
    backend = _Recording(1, processes=1, nice=7, die=True)  # its own pool: the crash breaks only that one
    client = app_with(backend)
    did = _target(client, sets=1)
    r = client.post("/v1/rankings", json={"target": did, "candidates": "models", "estimators": ["logme"]})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job"])
    assert job["status"] == "failed" and job["error"], job
    out = _ranking_end(client, r.json()["id"])
    assert out.status_code == 200 and out.json()["status"] == "failed"
    assert "worker process ended" in out.json()["error"] + job["error"] + str(out.json())
    backend.die = False  # the pool recovers: the same service ranks again
    r = client.post("/v1/rankings", json={"target": did, "candidates": "models", "estimators": ["hscore"]})
    assert wait_job(client, r.json()["job"])["status"] == "done"
    assert shared_pool(1, 7).submit(_pid).result(timeout=120) > 0


def test_worker_processes_end_with_a_killed_parent(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "parent.py"
    script.write_text(
        "import time\n"
        "from app.workers.procpool import NumericPool, _pid\n"
        "if __name__ == '__main__':\n"
        "    p = NumericPool(2, nice=0)\n"
        "    busy = p.submit(time.sleep, 60)\n"
        "    print(p.submit(_pid).result(), flush=True)\n"
        "    time.sleep(120)\n")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(root)})
    try:
        idle = int(proc.stdout.readline())
        kids = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _ppid(d) == proc.pid
                and b"spawn_main" in _cmdline(d)]
        assert idle in kids and len(kids) == 2  # one busy, one idle
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(Path(f"/proc/{k}")) for k in kids):
        assert time.monotonic() < deadline, "worker processes outlived their parent"
        time.sleep(0.2)


def _ppid(d) -> int | None:
    try:
        return int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(d) -> bytes:
    try:
        return (d / "cmdline").read_bytes()
    except OSError:
        return b""


def _alive(d) -> bool:
    try:
        return (d / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # zombies are gone
    except (OSError, IndexError):
        return False


def test_the_interpreter_exits_without_waiting_for_a_running_call(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "exits.py"
    script.write_text(
        "import time\n"
        "from app.workers.procpool import NumericPool, _pid\n"
        "if __name__ == '__main__':\n"
        "    p = NumericPool(1, nice=0)\n"
        "    p.submit(_pid).result()\n"
        "    p.submit(time.sleep, 60)\n"
        "    time.sleep(0.5)\n")
    root = Path(__file__).resolve().parents[2]
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": str(root)}, timeout=50)
    assert done.returncode == 0 and time.monotonic() - t0 < 30


_PIN: list[bytes] = []


def _fragment(mb: int) -> int:
    """~mb MB of 1 kB objects (glibc heap, not mmap), then one object kept above them so the heap
    cannot shrink from its top, then the rest freed: the freed pages stay resident unless trimmed."""
    junk = [bytes(1000) for _ in range(mb * 1000)]
    _PIN.append(bytes(1000))
    del junk
    return len(_PIN)


def test_a_call_that_grew_the_worker_gives_the_memory_back(pool):
    from app.core.memory import rss_bytes

    before = pool.submit(rss_bytes).result(timeout=120)
    if before is None:
        pytest.skip("no /proc/self/statm here")
    pool.submit(_fragment, 300).result(timeout=120)
    after = pool.submit(rss_bytes).result(timeout=60)
    assert after - before < 64 * 2**20, (before, after)


def _hold(junk: list[bytes]) -> int:
    """A call whose argument is large: the in-call release runs while the executor still holds
    it; one object kept above it, so the freed argument leaves holes only a trim gives back."""
    _PIN.append(bytes(1000))
    return len(junk)


def test_the_arguments_of_a_call_are_given_back_once_the_worker_is_idle(pool):
    from app.core.memory import rss_bytes
    from app.workers.procpool import IDLE_RELEASE_SECONDS

    before = pool.submit(rss_bytes).result(timeout=120)
    if before is None:
        pytest.skip("no /proc/self/statm here")
    junk = [bytes(1000) for _ in range(120_000)]  # ~120 MB pickled to the worker
    assert pool.submit(_hold, junk).result(timeout=120) == len(junk)
    del junk
    time.sleep(4 * IDLE_RELEASE_SECONDS)  # the idle watcher releases IDLE_RELEASE_SECONDS after the last call
    after = pool.submit(rss_bytes).result(timeout=60)
    assert after - before < 40 * 2**20, (before, after)


def _arrive_slowly(n: int) -> list[bytes]:
    from app.workers.procpool import IDLE_RELEASE_SECONDS

    junk = [bytes(1000) for _ in range(n)]
    time.sleep(3 * IDLE_RELEASE_SECONDS)
    return junk


class _SlowToArrive:
    """An argument that unpickles, in the worker, as ``n`` KB of bytes objects and then takes
    ``3 * IDLE_RELEASE_SECONDS`` more: the process looks idle with the argument resident."""

    def __init__(self, n: int):
        self.n = n

    def __reduce__(self):
        return (_arrive_slowly, (self.n,))


def test_arguments_still_arriving_do_not_raise_the_idle_floor():
    """The idle release can run while a large argument is still arriving (its call has not
    started): that size must not become the floor, or the argument stays resident for good."""
    from app.core.memory import rss_bytes
    from app.workers.procpool import IDLE_RELEASE_SECONDS

    pool = NumericPool(1, nice=5)
    try:
        before = pool.submit(rss_bytes).result(timeout=120)  # the watcher waits for quiet from here
        if before is None:
            pytest.skip("no /proc/self/statm here")
        assert pool.submit(_hold, _SlowToArrive(120_000)).result(timeout=120) == 120_000  # ~120 MB
        time.sleep(4 * IDLE_RELEASE_SECONDS)
        after = pool.submit(rss_bytes).result(timeout=60)
        assert after - before < 40 * 2**20, (before, after)
    finally:
        pool.shutdown()


def test_every_worker_process_starts_with_the_pool():
    p = NumericPool(2, nice=0)
    try:
        assert p.submit(_pid).result(timeout=120) > 0
        deadline = time.time() + 60
        while len(p.pids()) < 2 and time.time() < deadline:
            time.sleep(0.1)
        assert len(set(p.pids())) == 2
    finally:
        p.shutdown()


def _sum_and_scribble(X):
    total = float(X.sum())
    X[0, 0] = -1.0  # copy-on-write: the caller's array and the file stay as they were
    return total


def test_large_arrays_cross_through_shared_memory_and_are_removed_after_the_call(pool):
    from app.workers import procpool

    folder = pool._shared_folder()
    if folder is None:
        pytest.skip("no /dev/shm on this system: arrays are pickled")
    big = np.arange(200_000, dtype=np.float64).reshape(1000, 200)  # 1.6 MB >= SHARED_MIN_BYTES
    small = np.ones(10)
    args, kwargs, files = procpool.share_arrays((big, small), {"k": big}, folder)
    assert isinstance(args[0], procpool.SharedArray) and args[1] is small and len(files) == 2
    np.testing.assert_array_equal(procpool._unshare(kwargs["k"]), big)
    procpool.remove_files(files)
    assert not any(Path(folder).iterdir())
    assert pool.submit(_sum_and_scribble, big).result(timeout=120) == float(big.sum())
    assert big[0, 0] == 0.0
    X, y = _data(4000, 40)  # 1.28 MB of features: through shared memory, same value
    assert pool.submit(estimators.score, "logme", X, y).result() == estimators.score("logme", X, y)
    deadline = time.monotonic() + 10
    while any(Path(folder).iterdir()) and time.monotonic() < deadline:  # removed by the done-callback
        time.sleep(0.05)
    assert not any(Path(folder).iterdir())


def test_shared_memory_folders_of_dead_processes_are_removed(tmp_path, monkeypatch):
    from app.workers import procpool

    monkeypatch.setattr(procpool, "SHM_ROOT", tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{procpool._SHM_PREFIX}{dead.pid}-abc"
    stale.mkdir()
    (stale / "x.npy").write_bytes(b"0")
    mine = procpool._shm_folder()
    assert mine is not None and Path(mine).parent == tmp_path and not stale.exists()
    assert procpool._shm_folder() != mine and Path(mine).exists()  # a live process's folder stays
