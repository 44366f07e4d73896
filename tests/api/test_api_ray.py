"""The service on the Ray backend (a real local Ray instance, CPU): a models ranking runs its
feature extraction in Ray actors and gives the same scores as the local thread pool.
Deselect with ``-m 'not ray'``."""
from __future__ import annotations

import pytest

from conftest import csv_bytes, make_texts, rank, upload

pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def test_models_ranking_on_ray_equals_local(make_client, tmp_path):
    body_for = lambda did: {"target": did, "candidates": "models", "sources": ["glove-6b-50d"],  # noqa: E731
                            "estimators": ["logme", "hscore"]}
    csv = csv_bytes(*make_texts(40, 2, seed=4))
    local = make_client(tmp_path / "local")
    on_local = rank(local, body_for(upload(local, csv, "t.csv").json()["id"]))

    import ray

    client = make_client(tmp_path / "ray", ray_address="local", workers=1)
    try:
        info = client.get("/v1/info").json()
        assert info["workers"]["backend"] in ("ray", "not started")
        on_ray = rank(client, body_for(upload(client, csv, "t.csv").json()["id"]))
        assert client.app.state.ctx.backend.describe()["backend"] == "ray"
        assert ray.is_initialized()
    finally:
        client.__exit__(None, None, None)
    assert not ray.is_initialized()  # the service shut down the Ray instance it started
    assert on_ray["computed"] == 2
    assert [r["scores"] for r in on_ray["ranking"]] == [r["scores"] for r in on_local["ranking"]]
