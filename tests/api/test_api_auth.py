"""Authentication that cannot fall open: modes, the first admin key, revocation, stored hashes."""
from __future__ import annotations

import hashlib
import threading

import pytest

from conftest import csv_bytes, make_texts

BOOT = "b" * 20 + "-bootstrap-secret-0123456789"


def _h(key):
    return {"Authorization": f"Bearer {key}"}


def upload_with(client, headers):
    return client.post("/v1/datasets", files={"file": ("t.csv", csv_bytes(*make_texts(10, 2)))}, headers=headers)


def test_keys_gate_v1_once_one_exists(client):
    from app.services import keys as keys_svc

    ctx = client.app.state.ctx
    assert client.get("/v1/datasets").status_code == 200  # in-process, no key yet: open
    assert client.post("/v1/keys", json={"owner": "eve", "scopes": ["admin"]}).status_code == 401  # never anonymous
    _info, admin_key = keys_svc.create(ctx, "ops", "read,write,admin")
    _info, reader = keys_svc.create(ctx, "dashboard", "read")
    r = client.get("/v1/datasets")
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    assert client.get("/v1/datasets", headers=_h("nope")).status_code == 401
    wrong_secret = admin_key[:13] + "A" * (len(admin_key) - 13)  # the right key id, another secret
    assert client.get("/v1/datasets", headers=_h(wrong_secret)).status_code == 401
    assert client.get("/v1/datasets", headers={"Authorization": admin_key}).status_code == 401  # no scheme
    assert client.get("/healthz").status_code == 200  # health stays open
    rh = _h(reader)
    assert client.get("/v1/datasets", headers=rh).status_code == 200
    r = upload_with(client, rh)
    assert r.status_code == 403 and "lacks the 'write' scope" in r.json()["detail"]
    ah = _h(admin_key)
    assert upload_with(client, ah).status_code == 201
    # key management over the API needs admin
    assert client.get("/v1/keys", headers=rh).status_code == 403
    created = client.post("/v1/keys", json={"owner": "ci", "scopes": ["read", "write"]}, headers=ah)
    assert created.status_code == 201 and created.json()["key"].startswith("trk_")
    wh = _h(created.json()["key"])
    assert client.post("/v1/feedback", json={"source": "x", "target": "y", "metric": "acc", "value": 1},
                       headers=wh).status_code == 404  # authorised; the ids are unknown
    listed = client.get("/v1/keys", headers=ah).json()["keys"]
    assert {k["owner"] for k in listed} == {"ops", "dashboard", "ci"}
    assert all("key" not in k and "key_hash" not in k and "salt" not in k for k in listed)
    reader_id = next(k["id"] for k in listed if k["owner"] == "dashboard")
    assert client.delete(f"/v1/keys/{reader_id}", headers=ah).json()["active"] is False
    assert client.get("/v1/datasets", headers=rh).status_code == 401
    assert client.post("/v1/keys", json={"owner": "public"}, headers=ah).status_code == 422  # reserved name


def test_revoking_keys_never_reopens_the_service(client):
    from app.services import keys as keys_svc

    ctx = client.app.state.ctx
    info, key = keys_svc.create(ctx, "solo", "read,write")  # not an admin: it can be revoked
    keys_svc.revoke(ctx, info["id"])
    r = client.get("/v1/datasets")
    assert r.status_code == 401  # a key existed once: keys stay required
    assert client.get("/v1/datasets", headers=_h(key)).status_code == 401


def test_last_admin_key_cannot_be_revoked(make_client, db_url, tmp_path):
    from app.services import keys as keys_svc

    client = make_client(tmp_path / "d", database_url=db_url)
    ctx = client.app.state.ctx
    a1, k1 = keys_svc.create(ctx, "ops", "admin")
    a2, _k2 = keys_svc.create(ctx, "ops2", "read,write,admin")
    assert client.delete(f"/v1/keys/{a2['id']}", headers=_h(k1)).status_code == 200
    r = client.delete(f"/v1/keys/{a1['id']}", headers=_h(k1))
    assert r.status_code == 409 and "last active admin key" in r.json()["detail"]
    assert client.get("/v1/keys", headers=_h(k1)).status_code == 200  # still in
    assert client.delete("/v1/keys/nosuchkey", headers=_h(k1)).status_code == 404
    # two admins revoked at the same time: exactly one revocation wins
    b1, _ = keys_svc.create(ctx, "ops3", "admin")
    results = []

    def revoke(key_id):
        try:
            keys_svc.revoke(ctx, key_id)
            results.append("ok")
        except Exception as exc:  # noqa: BLE001 - the outcome is what is checked
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=revoke, args=(i,)) for i in (a1["id"], b1["id"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["Conflict", "ok"], results
    assert sum(k["active"] and "admin" in k["scopes"] for k in keys_svc.list_all(ctx)) == 1


def test_keys_are_stored_salted_never_in_plaintext(make_client, db_url, tmp_path):
    from sqlalchemy import text

    from app.services import keys as keys_svc

    client = make_client(tmp_path / "d", database_url=db_url)
    ctx = client.app.state.ctx
    made = [keys_svc.create(ctx, "ops", "admin") for _ in range(3)]
    with ctx.Session() as s:
        rows = [tuple(str(v) for v in r) for r in s.execute(text("SELECT * FROM api_keys")).all()]
    dump = repr(rows)
    salts = set()
    for info, key in made:
        secret = key.split("_", 2)[2]
        assert key not in dump and secret not in dump
        assert hashlib.sha256(key.encode()).hexdigest() not in dump  # not an unsalted hash either
        with ctx.Session() as s:
            salt, scheme = s.execute(text("SELECT salt, hash_scheme FROM api_keys WHERE id = :i"),
                                     {"i": info["id"]}).one()
        assert scheme == "hmac-sha256" and len(salt) == 32
        salts.add(salt)
        assert client.get("/v1/keys", headers=_h(key)).status_code == 200
    assert len(salts) == 3


def test_closed_until_a_key_exists_off_loopback(make_client, tmp_path):
    from app.services import keys as keys_svc

    client = make_client(tmp_path / "d", host="0.0.0.0")
    r = client.get("/v1/datasets")
    assert r.status_code == 401 and "transferrank keys create" in r.json()["detail"]
    assert client.post("/v1/keys", json={"owner": "eve", "scopes": ["admin"]}).status_code == 401
    _i, key = keys_svc.create(client.app.state.ctx, "ops", "read,write,admin")
    assert client.get("/v1/datasets", headers=_h(key)).status_code == 200
    keys_mode = make_client(tmp_path / "k", auth="keys")  # explicit: closed even in-process
    r = keys_mode.get("/v1/datasets")
    assert r.status_code == 401 and "none exists yet" in r.json()["detail"]


def test_bootstrap_admin_key_from_the_environment(make_client, tmp_path):
    from app.core.config import Settings
    from app.services import keys as keys_svc

    data = tmp_path / "d"
    client = make_client(data, host="0.0.0.0", bootstrap_admin_key=BOOT, bootstrap_admin_owner="root")
    assert client.get("/v1/datasets").status_code == 401
    r = client.get("/v1/keys", headers=_h(BOOT))
    assert r.status_code == 200 and r.json()["keys"][0]["id"] == "bootstrap"
    made = client.post("/v1/keys", json={"owner": "alice", "scopes": ["read", "write"]}, headers=_h(BOOT))
    assert made.status_code == 201
    assert client.post("/v1/datasets", files={"file": ("t.csv", csv_bytes(*make_texts(10, 2)))},
                       headers=_h(BOOT)).json()["owner"] == "root"
    # a second admin, then revoke the bootstrap key: a restart with the same secret does not revive it
    ops = client.post("/v1/keys", json={"owner": "ops", "scopes": ["admin"]}, headers=_h(BOOT)).json()["key"]
    assert client.delete("/v1/keys/bootstrap", headers=_h(ops)).status_code == 200
    client.__exit__(None, None, None)
    again = make_client(data, host="0.0.0.0", bootstrap_admin_key=BOOT)
    assert again.get("/v1/keys", headers=_h(BOOT)).status_code == 401
    again.__exit__(None, None, None)
    rotated = make_client(data, host="0.0.0.0", bootstrap_admin_key=BOOT + "-rotated")
    assert rotated.get("/v1/keys", headers=_h(BOOT + "-rotated")).status_code == 200
    assert rotated.get("/v1/keys", headers=_h(BOOT)).status_code == 401
    with pytest.raises(ValueError, match="at least 32"):
        keys_svc.check_settings(Settings(bootstrap_admin_key="short"))


def test_open_mode_only_on_loopback(settings_factory, tmp_path, monkeypatch, capsys):
    from app.cli import main
    from app.main import create_app
    from app.services import keys as keys_svc

    assert keys_svc.is_loopback("127.0.0.1") and keys_svc.is_loopback("::1") and keys_svc.is_loopback("localhost")
    assert keys_svc.is_loopback(None) and not keys_svc.is_loopback("0.0.0.0") and not keys_svc.is_loopback("10.1.2.3")
    with pytest.raises(ValueError, match="loopback"):
        keys_svc.check_settings(settings_factory(auth="open", host="0.0.0.0"))
    keys_svc.check_settings(settings_factory(auth="open", host="127.0.0.1"))
    from fastapi.testclient import TestClient

    with pytest.raises(ValueError, match="loopback"), TestClient(create_app(settings_factory(auth="open",
                                                                                    host="0.0.0.0"))):
        pass
    monkeypatch.setenv("TRANSFERRANK_AUTH", "open")
    monkeypatch.setenv("TRANSFERRANK_SEED_DEMO", "0")
    assert main(["serve", "--host", "0.0.0.0", "--port", "1", "--data-dir", str(tmp_path / "s")]) == 2
    assert "only on a loopback address" in capsys.readouterr().err
    monkeypatch.setenv("TRANSFERRANK_AUTH", "sometimes")
    with pytest.raises(ValueError, match="TRANSFERRANK_AUTH"):
        from app.core.config import Settings

        Settings.from_env()


def test_open_mode_is_logged_at_start(make_client, tmp_path):
    import logging

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    logger = logging.getLogger("transferrank.api")
    handler = Keep(logging.WARNING)
    logger.addHandler(handler)
    try:
        make_client(tmp_path / "o", auth="open", host="127.0.0.1")
    finally:
        logger.removeHandler(handler)
    assert any("AUTH OPEN" in r.getMessage() and r.levelno == logging.WARNING for r in seen)
