"""Content-addressed blob store and SQL storage (SQLite and, with TEST_DATABASE_URL, PostgreSQL)."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.core.errors import Invalid
from app.db.models import Dataset, FeatureSet, Score
from app.services import datasets as datasets_svc
from app.services import features as features_svc
from app.services import scores as scores_svc
from app.storage.blobs import BlobStore
from conftest import csv_bytes, make_texts


# ---------------------------------------------------------------------- blob store
def test_blob_keys_are_sha256_of_content_and_dedupe(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    k1 = store.put_array(a)
    k2 = store.put_array(a.copy())
    assert k1 == k2 and k1.endswith(".npy")
    path = store.path(k1)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == k1.split(".")[0]
    assert list(store.keys()) == [k1]
    np.testing.assert_array_equal(store.get_array(k1), a)
    assert store.verify(k1)
    assert not any(p.name.startswith(".tmp-") for p in path.parent.iterdir())  # atomic: no temp left


def test_blob_store_refuses_pickles_and_bad_keys(tmp_path):
    store = BlobStore(tmp_path)
    with pytest.raises(ValueError, match="object arrays"):
        store.put_array(np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a blob key"):
        store.path("../../etc/passwd")
    k = store.put_json({"texts": ["ä", "b"]})
    assert store.get_json(k) == {"texts": ["ä", "b"]}


def test_blob_corruption_is_detected(tmp_path):
    store = BlobStore(tmp_path)
    k = store.put_array(np.ones(5))
    store.path(k).write_bytes(b"garbage")
    assert not store.verify(k)


def test_blob_writer_removes_only_new_blobs_on_error(tmp_path):
    store = BlobStore(tmp_path)
    shared = store.put_array(np.zeros(3))
    with pytest.raises(RuntimeError):
        with store.writer() as w:
            k_shared = w.put_array(np.zeros(3))
            k_new = w.put_array(np.ones(3))
            raise RuntimeError("SQL failed")
    assert k_shared == shared and store.exists(shared)  # existed before: kept
    assert not store.exists(k_new)  # created in the failed block: removed


# ---------------------------------------------------------------------- SQL storage
@pytest.fixture
def ctx(db_url, settings_factory):
    from app.services.startup import open_context

    c = open_context(settings_factory(database_url=db_url))
    yield c
    c.close()


def _parsed(ctx, n=30, seed=0):
    texts, labels = make_texts(n, 3, seed=seed)
    return datasets_svc.parse_upload(csv_bytes(texts, labels), "d.csv", ctx.settings)


def test_dataset_is_stored_once_by_content(ctx):
    ds1, created1 = datasets_svc.store_parsed(ctx, _parsed(ctx), "one")
    ds2, created2 = datasets_svc.store_parsed(ctx, _parsed(ctx), "again")
    assert created1 and not created2 and ds1.id == ds2.id
    with ctx.Session() as s:
        assert s.scalar(select(func.count()).select_from(Dataset)) == 1
    assert datasets_svc.texts(ctx, ds1)[0] == make_texts(30, 3)[0][0]
    np.testing.assert_array_equal(datasets_svc.labels(ctx, ds1), np.arange(30) % 3)


def test_failed_sql_write_leaves_no_blobs(ctx, monkeypatch):
    parsed = _parsed(ctx, seed=7)
    before = set(ctx.blobs.keys())

    class Boom:
        def __init__(self, real):
            self.real = real

        def __call__(self, *a, **k):
            return self.real(*a, **k)

        def begin(self):
            raise RuntimeError("database went away")

    monkeypatch.setattr(ctx, "Session", Boom(ctx.Session))
    with pytest.raises(RuntimeError, match="went away"):
        datasets_svc.store_parsed(ctx, parsed, "x")
    monkeypatch.undo()
    assert set(ctx.blobs.keys()) == before
    with ctx.Session() as s:
        assert s.scalar(select(func.count()).select_from(Dataset)) == 0


def test_score_cache_is_unique_on_its_key(ctx):
    row = dict(source="m", source_kind="model", target_sha256="a" * 64, encoder="m", estimator="logme",
               params_hash=scores_svc.params_hash({}), params={}, version="1", value=1.5, n=10)
    assert scores_svc.store_many(ctx, [row]) == 1
    assert scores_svc.store_many(ctx, [dict(row, value=9.9), dict(row, estimator="hscore")]) == 1
    with ctx.Session() as s:
        got = scores_svc.lookup_target(s, "a" * 64, ["logme", "hscore"], "1")
    assert sorted(v.value for v in got.values()) == [1.5, 1.5]  # the duplicate did not overwrite
    with pytest.raises(IntegrityError):
        with ctx.Session.begin() as s:
            s.add(Score(**row))
    # another params hash or version is another score
    assert scores_svc.store_many(ctx, [dict(row, params_hash=scores_svc.params_hash({"alpha": 1}))]) == 1
    assert scores_svc.store_many(ctx, [dict(row, version="2")]) == 1


def test_feature_sets_unique_and_deleted_with_dataset(ctx):
    ds, _ = datasets_svc.store_parsed(ctx, _parsed(ctx, seed=3), "f")
    X = np.random.default_rng(0).normal(size=(30, 50)).astype(np.float32)
    fs1 = features_svc.store(ctx, ds, ctx.settings.base_encoder, X)
    fs2 = features_svc.store(ctx, ds, ctx.settings.base_encoder, X)  # concurrent duplicate -> same row
    assert fs1.blob == fs2.blob
    np.testing.assert_allclose(features_svc.get_features(ctx, ds, ctx.settings.base_encoder), X)
    te = features_svc.dataset_task_embedding(ctx, ds)
    assert te.shape == (50,) and abs(np.linalg.norm(te) - 1) < 1e-5
    keys = set(ctx.blobs.keys())
    assert fs1.blob in keys
    out = datasets_svc.delete_dataset(ctx, ds.id)
    assert out["deleted"] and out["blobs_removed"] >= 4
    with ctx.Session() as s:
        assert s.scalar(select(func.count()).select_from(FeatureSet)) == 0
    assert list(ctx.blobs.keys()) == []


def test_limits_are_enforced_before_anything_is_written(ctx):
    ctx.settings = ctx.settings.replace(max_rows=10)
    with pytest.raises(Invalid, match="exceed the limit of 10"):
        _parsed(ctx, n=30)
    assert list(ctx.blobs.keys()) == []
