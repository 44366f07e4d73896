"""API keys: open until the first key exists, then Bearer keys with read/write/admin scopes."""
from __future__ import annotations

from conftest import csv_bytes, make_texts


def test_keys_gate_v1_once_one_exists(client):
    from app.services import keys as keys_svc

    ctx = client.app.state.ctx
    assert client.get("/v1/datasets").status_code == 200  # no key yet: open
    _info, admin_key = keys_svc.create(ctx, "ops", "admin")
    _info, reader = keys_svc.create(ctx, "dashboard", "read")
    r = client.get("/v1/datasets")
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    assert client.get("/v1/datasets", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/healthz").status_code == 200  # health stays open
    rh = {"Authorization": f"Bearer {reader}"}
    assert client.get("/v1/datasets", headers=rh).status_code == 200
    r = upload_with(client, rh)
    assert r.status_code == 403 and "lacks the 'write' scope" in r.json()["detail"]
    ah = {"Authorization": f"Bearer {admin_key}"}
    assert upload_with(client, ah).status_code == 201
    # key management over the API needs admin
    assert client.get("/v1/keys", headers=rh).status_code == 403
    created = client.post("/v1/keys", json={"owner": "ci", "scopes": ["read", "write"]}, headers=ah)
    assert created.status_code == 201 and created.json()["key"].startswith("trk_")
    wh = {"Authorization": f"Bearer {created.json()['key']}"}
    assert client.post("/v1/feedback", json={"source": "x", "target": "y", "metric": "acc", "value": 1},
                       headers=wh).status_code == 404  # authorised; the ids are unknown
    listed = client.get("/v1/keys", headers=ah).json()["keys"]
    assert {k["owner"] for k in listed} == {"ops", "dashboard", "ci"}
    assert all("key" not in k and "key_hash" not in k for k in listed)
    reader_id = next(k["id"] for k in listed if k["owner"] == "dashboard")
    assert client.delete(f"/v1/keys/{reader_id}", headers=ah).json()["active"] is False
    ctx.auth_cache.clear()
    assert client.get("/v1/datasets", headers=rh).status_code == 401


def upload_with(client, headers):
    return client.post("/v1/datasets", files={"file": ("t.csv", csv_bytes(*make_texts(10, 2)))}, headers=headers)
