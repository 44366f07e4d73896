"""The FAISS task index: exactness/recall against numpy, upsert/remove, persistence, staleness."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from app.index import TaskIndex, ids_checksum, register_task_embedding, task_embedding
from app.index.faiss_index import TASK_EMBEDDINGS

N_SOURCES, DIM, N_QUERIES = 6000, 64, 40


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def sources():
    """Synthetic task embeddings: 60 'domains' (cluster centres) with per-task noise."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((60, DIM))
    assign = rng.integers(0, 60, N_SOURCES)
    vecs = _unit(centres[assign] + 0.6 * rng.standard_normal((N_SOURCES, DIM))).astype(np.float32)
    ids = rng.choice(10**9, N_SOURCES, replace=False).astype(np.int64)  # sparse, like SQL ids
    queries = _unit(centres[rng.integers(0, 60, N_QUERIES)] + 0.6 * rng.standard_normal((N_QUERIES, DIM)))
    return ids, vecs, queries.astype(np.float32)


def _exact_topk(vecs, ids, q, k):
    sims = vecs.astype(np.float64) @ q.astype(np.float64)
    order = np.argsort(-sims, kind="stable")[:k]
    return ids[order], sims[order]


def _recall(index, ids, vecs, queries, true_k, prefilter_k):
    hits = 0
    for q in queries:
        truth, _ = _exact_topk(vecs, ids, q, true_k)
        got = {i for i, _ in index.search(q, prefilter_k)}
        hits += len(set(truth.tolist()) & got)
    return hits / (true_k * len(queries))


def test_flat_index_is_exact(tmp_path, sources):
    ids, vecs, queries = sources
    index = TaskIndex.rebuild(tmp_path / "tasks.faiss", DIM, (ids, vecs))
    assert len(index) == N_SOURCES
    for q in queries[:10]:
        truth_ids, truth_sims = _exact_topk(vecs, ids, q, 20)
        got = index.search(q, 20)
        np.testing.assert_allclose([s for _, s in got], truth_sims, atol=1e-5)
        # same ids up to float ties
        assert len(set(truth_ids.tolist()) & {i for i, _ in got}) >= 19
    assert _recall(index, ids, vecs, queries, true_k=10, prefilter_k=50) == 1.0


def test_ivf_recall_at_prefilter(tmp_path, sources):
    ids, vecs, queries = sources
    index = TaskIndex.rebuild(tmp_path / "ivf.faiss", DIM, (ids, vecs), kind="ivf")
    assert index.nlist and index.nlist > 1
    recall = _recall(index, ids, vecs, queries, true_k=10, prefilter_k=50)
    assert recall >= 0.95, recall
    reopened = TaskIndex(tmp_path / "ivf.faiss", DIM, kind="ivf")
    assert reopened.loaded_from_disk and len(reopened) == N_SOURCES
    assert reopened.search(queries[0], 5) == index.search(queries[0], 5)
    reopened.remove(ids[:100])
    reopened.add(ids[:3], vecs[:3])
    assert len(reopened) == N_SOURCES - 97


def test_add_upsert_remove_search(tmp_path):
    rng = np.random.default_rng(1)
    index = TaskIndex(tmp_path / "t.faiss", 8)
    assert len(index) == 0 and index.search(np.ones(8), 5) == []
    v = rng.standard_normal((5, 8)) * 3.0  # not unit norm: the index normalises
    index.add([10, 11, 12, 13, 14], v)
    best_id, best_sim = index.search(v[2], 1)[0]
    assert best_id == 12 and best_sim == pytest.approx(1.0, abs=1e-5)
    index.add([12], -v[2])  # upsert: replaced, not duplicated
    assert len(index) == 5 and index.search(v[2], 5)[-1][0] == 12
    assert index.remove([11, 999]) == 1 and 11 not in index and len(index) == 4
    assert index.search(v[0], 100)[0][0] == 10 and len(index.search(v[0], 100)) == 4
    with pytest.raises(ValueError, match="shape"):
        index.add([1], np.ones(7))
    with pytest.raises(ValueError, match="NaN"):
        index.add([1], np.full(8, np.nan))
    with pytest.raises(ValueError, match="non-zero"):
        index.add([1], np.zeros(8))
    with pytest.raises(ValueError, match="2 ids but 1"):
        index.add([1, 2], np.ones(8))
    with pytest.raises(ValueError, match="unique"):
        index.add([1, 1], np.ones((2, 8)))
    with pytest.raises(ValueError, match=">= 0"):
        index.add([-1], np.ones(8))
    with pytest.raises(ValueError, match="k must be"):
        index.search(np.ones(8), 0)


def test_persist_reload_and_staleness(tmp_path, sources):
    ids, vecs, _ = sources
    path = tmp_path / "sub" / "tasks.faiss"
    index = TaskIndex(path, DIM)
    index.add(ids[:500], vecs[:500])
    assert not path.exists()
    index.save()
    assert path.exists() and index.meta_path.exists()
    assert not list(path.parent.glob(".*"))  # no temp files left behind
    meta = json.loads(index.meta_path.read_text())
    assert meta["count"] == 500 and meta["checksum"] == ids_checksum(ids[:500])

    again = TaskIndex(path, DIM)
    assert again.loaded_from_disk and len(again) == 500
    assert again.fingerprint() == (500, ids_checksum(ids[:500]))
    assert not again.is_stale(ids[:500][::-1])  # order does not matter
    assert not again.is_stale({int(i) for i in ids[:500]})  # a set of SQL ids works too
    assert again.is_stale(ids[:499]) and again.is_stale(ids[:501])
    assert again.search(vecs[7], 1)[0][0] == ids[7]

    # wrong dimension, other task-embedding method, corrupt file, missing file -> stale
    wrong = TaskIndex(path, DIM + 1)
    assert not wrong.loaded_from_disk and "dim" in wrong.load_problem and wrong.is_stale()
    other = TaskIndex(path, DIM, method="class-mean")
    assert other.is_stale() and "task embedding" in other.load_problem
    path.write_bytes(path.read_bytes()[:100])
    broken = TaskIndex(path, DIM)
    assert broken.is_stale() and len(broken) == 0 and "unreadable" in broken.load_problem
    path.unlink()
    missing = TaskIndex(path, DIM)
    assert missing.is_stale(ids[:500]) and len(missing) == 0

    rebuilt = TaskIndex.rebuild(path, DIM, [(int(i), v) for i, v in zip(ids[:500], vecs[:500])])
    assert not rebuilt.is_stale(ids[:500])
    assert not TaskIndex(path, DIM).is_stale(ids[:500])


def test_meta_mismatch_is_detected(tmp_path):
    index = TaskIndex.rebuild(tmp_path / "t.faiss", 4, ([1, 2], np.eye(4)[:2]))
    meta = json.loads(index.meta_path.read_text())
    meta["count"] = 3
    index.meta_path.write_text(json.dumps(meta))
    reopened = TaskIndex(tmp_path / "t.faiss", 4)
    assert reopened.is_stale() and "metadata" in reopened.load_problem


def test_concurrent_add_and_search(tmp_path):
    rng = np.random.default_rng(2)
    index = TaskIndex(tmp_path / "t.faiss", 16)
    vecs = rng.standard_normal((400, 16))
    errors = []

    def writer(lo):
        try:
            for i in range(lo, lo + 100):
                index.add([i], vecs[i])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader():
        try:
            for i in range(200):
                index.search(vecs[i % 400], 5)
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(lo,)) for lo in (0, 100, 200, 300)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(index) == 400 and sorted(index.ids()) == list(range(400))


def test_task_embedding():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((50, 6)) + 2.0
    e = task_embedding(X)
    assert e.dtype == np.float32 and e.shape == (6,)
    np.testing.assert_allclose(e, X.mean(0) / np.linalg.norm(X.mean(0)), rtol=1e-6)
    y = np.r_[np.zeros(40, int), np.ones(10, int)]
    cm = task_embedding(X, y, method="class-mean")
    means = np.vstack([X[:40].mean(0), X[40:].mean(0)]).mean(0)
    np.testing.assert_allclose(cm, means / np.linalg.norm(means), rtol=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        task_embedding(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="2-D"):
        task_embedding(np.ones(3))
    with pytest.raises(ValueError, match="zero"):
        task_embedding(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="unknown task embedding"):
        task_embedding(X, method="nope")
    register_task_embedding("first-row", lambda X, y=None: X[0] / np.linalg.norm(X[0]))
    try:
        np.testing.assert_allclose(task_embedding(X, method="first-row"), X[0] / np.linalg.norm(X[0]), rtol=1e-6)
    finally:
        TASK_EMBEDDINGS.pop("first-row")
