"""The transfer matrix is cached by the catalogue's state: rebuilt once per change, by one caller."""
from __future__ import annotations

import threading
import time

import numpy as np

from app.services import matrix as matrix_svc
from conftest import npz_bytes, rank, upload


def _target(client):
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    return upload(client, npz_bytes(features=rng.normal(size=(60, 4)), labels=y,
                                    features_good=np.eye(3)[y] * 2 + rng.normal(size=(60, 3))), "m.npz").json()["id"]


def test_matrix_is_rebuilt_only_when_the_catalogue_changes(client):
    ctx = client.app.state.ctx
    did = _target(client)
    rank(client, {"target": did, "candidates": "models", "estimators": ["logme"]})
    first = matrix_svc.build(ctx, "logme")
    assert matrix_svc.build(ctx, "logme") is first  # same state: the cached matrix
    assert len(first["entries"]) == 2
    body = client.get("/v1/transfer-matrix", params={"estimator": "logme"}).json()
    assert body["total"] == 2
    rank(client, {"target": did, "candidates": "models", "estimators": ["hscore"]})  # new scores
    assert matrix_svc.build(ctx, "logme") is not first  # the state changed: built again
    assert matrix_svc.build(ctx, "logme")["entries"] == first["entries"]  # same rows for this filter
    both = client.get("/v1/transfer-matrix").json()
    assert both["estimators"] == ["hscore", "logme"] and both["total"] == 4
    client.delete(f"/v1/datasets/{did}")
    assert client.get("/v1/transfer-matrix").json()["total"] == 0


def test_concurrent_requests_share_one_build(client, monkeypatch):
    ctx = client.app.state.ctx
    calls = []
    real = matrix_svc._build

    def slow(*args, **kwargs):
        calls.append(1)
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(matrix_svc, "_build", slow)
    out: list[dict] = []
    threads = [threading.Thread(target=lambda: out.append(matrix_svc.build(ctx, "nce"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(out) == 8 and all(o is out[0] for o in out)


def test_the_cached_json_answer_is_the_model_serialised(client):
    from app.api.routes_matrix import _matrix
    from app.api.schemas import MatrixPublic

    did = _target(client)
    rank(client, {"target": did, "candidates": "models", "estimators": ["logme", "hscore"]})
    ctx = client.app.state.ctx
    for params, args in [({}, (None, None, None, "long", "score", None, 0)),
                         ({"layout": "wide", "value": "logme", "limit": 1, "offset": 1},
                          (None, None, None, "wide", "logme", 1, 1)),
                         ({"estimator": "hscore", "limit": 1}, ("hscore", None, None, "long", "score", 1, 0))]:
        for _ in range(2):  # computed, then from the cache
            r = client.get("/v1/transfer-matrix", params=params)
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            want = MatrixPublic.model_validate(_matrix(ctx, "local", *args)).model_dump(mode="json", by_alias=True)
            assert r.json() == want
    assert client.get("/v1/transfer-matrix", params={"value": "logme"}).status_code == 422  # errors not cached
    assert client.get("/v1/transfer-matrix", params={"value": "logme"}).status_code == 422
