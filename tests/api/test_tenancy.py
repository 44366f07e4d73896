"""Tenancy over every /v1 endpoint, on SQLite and PostgreSQL.

Alice owns a dataset, a source, a ranking, a job and feedback; the public catalogue holds one
source. Every route of the app (enumerated from the app's OpenAPI document, so endpoints added later are
covered too) is called with alice's ids by four clients: no key (401), a wrong key (401), bob —
another owner (404 on alice's rows, and alice's names absent from every list, matrix and error
text) — and alice's read-only key (403 on writes, reads allowed). Routes whose parameters or
bodies this file does not know still get the generic checks: auth first, no 5xx, no leak.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import FAST_BASE, csv_bytes, make_texts, npz_bytes


def _h(key: str | None) -> dict:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _keys(ctx):
    from app.services import keys as keys_svc

    out = {}
    for label, owner, scopes in (("ops", "ops", "read,write,admin"), ("alice", "alice", "read,write"),
                                 ("alice_ro", "alice", "read"), ("bob", "bob", "read,write")):
        info, key = keys_svc.create(ctx, owner, scopes)
        out[label] = key
        out[label + "_id"] = info["id"]
    return out


def _features(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return rng.normal(size=(n, dim)) + y[:, None], y


@pytest.fixture
def world(make_client, db_url, tmp_path):
    """A service with keys for ops (admin), alice, alice read-only, bob, and alice's rows."""
    from app.db.models import PUBLIC_OWNER, EncoderRow
    from app.services import datasets as datasets_svc
    from app.services import sources as sources_svc

    client = make_client(tmp_path / "data", database_url=db_url)
    ctx = client.app.state.ctx
    k = _keys(ctx)
    with ctx.Session() as s:  # an NPZ source carries features of the base encoder
        dim = s.get(EncoderRow, FAST_BASE).dim
    # the public catalogue: one NPZ source, added as an admin would
    X, y = _features(30, dim, 1)
    pub_ds, _ = datasets_svc.create_from_upload(ctx, npz_bytes(features=X, labels=y), "pub.npz", "public-set",
                                                owner=PUBLIC_OWNER)
    sources_svc.register(ctx, pub_ds.id, "public-src", owner="ops", admin=True)
    A = _h(k["alice"])
    texts, labels = make_texts(30, 2, seed=3)
    content = csv_bytes(texts, labels)
    r = client.post("/v1/datasets", files={"file": ("alice-secret-reviews.csv", content)}, headers=A)
    assert r.status_code == 201, r.text
    ds = r.json()
    r = client.post("/v1/datasets", files={"file": ("alice-src.csv", csv_bytes(*make_texts(30, 2, seed=4,
                                                                                            vocab_shift=1)))},
                    headers=A)
    src_ds = r.json()
    r = client.post("/v1/sources", json={"dataset": src_ds["id"], "name": "alice-private-src", "train_esm": False},
                    headers=A)
    assert r.status_code == 202, r.text
    job_id = r.json()["job"]
    job = wait_job_as(client, job_id, A)
    assert job["status"] == "done", job
    ranking = rank_as(client, {"target": ds["id"], "candidates": "tasks"}, A)
    r = client.post("/v1/feedback", json={"source": "alice-private-src", "target": ds["id"], "metric": "accuracy",
                                          "value": 0.9, "note": "alice-secret-note"}, headers=A)
    assert r.status_code == 201, r.text
    model = None
    if ("POST", "/v1/models") in _routes(client.app):  # user-registered models belong to an owner too
        from pathlib import Path

        import app

        shipped = sorted((Path(app.__file__).parent / "demo" / "data").rglob("*.pt"))
        assert shipped, "no TorchScript model ships with the demo data to register as alice's model"
        r = client.post("/v1/models", json={"name": "alice-private-model", "path": str(shipped[0]), "wait": 0},
                        headers=A)
        assert r.status_code in (201, 202), r.text
        model = "alice-private-model"
    return {"client": client, "ctx": ctx, "keys": k, "dataset": ds, "source_dataset": src_ds,
            "source": "alice-private-src", "ranking": ranking["id"], "job": job_id, "content": content,
            "public_dataset": pub_ds.id, "model": model}


def wait_job_as(client, job_id: str, headers: dict, timeout: float = 120.0) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/v1/jobs/{job_id}", headers=headers)
        assert r.status_code == 200, r.text
        job = r.json()
        if job.get("status") in ("done", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def rank_as(client, body: dict, headers: dict) -> dict:
    r = client.post("/v1/rankings", json=body, headers=headers)
    assert r.status_code in (200, 202), r.text
    out = r.json()
    if r.status_code == 202:
        assert wait_job_as(client, out["job"], headers)["status"] == "done"
        out = client.get(f"/v1/rankings/{out['id']}", headers=headers).json()
    assert out["status"] == "done", out
    return out


def _secrets(w) -> list[str]:
    """Strings of alice's that no other owner may ever see."""
    out = [w["dataset"]["id"], w["source_dataset"]["id"], "alice-secret-reviews", "alice-private-src",
           w["ranking"], w["job"], "alice-secret-note", w["source_dataset"]["name"]]
    return out + ([w["model"]] if w["model"] else [])


# ---------------------------------------------------------------------- route enumeration
def _routes(app) -> list[tuple[str, str]]:
    """Every (method, path) under /v1 that the OpenAPI document of the app declares."""
    out = []
    for path, item in app.openapi()["paths"].items():
        if path.startswith("/v1"):
            out += [(m.upper(), path) for m in item if m.upper() in ("GET", "POST", "PUT", "PATCH", "DELETE")]
    return sorted(set(out))


_PARAM_BY_COLLECTION = {"datasets": "dataset", "sources": "source", "rankings": "ranking", "jobs": "job",
                        "keys": "key", "models": "model"}


def _fill(path: str, w) -> tuple[str, bool]:
    """``path`` with alice's ids; second value: whether every parameter was one of alice's rows."""
    segments = path.strip("/").split("/")
    known = True
    for i, seg in enumerate(segments):
        if seg.startswith("{"):
            kind = _PARAM_BY_COLLECTION.get(segments[i - 1])
            value = {"dataset": w["dataset"]["id"], "source": w["source"], "ranking": w["ranking"],
                     "job": w["job"], "key": w["keys"]["alice_id"], "model": w["model"]}.get(kind)
            if value is None:
                known, value = False, "unknown-" + seg.strip("{}")
            segments[i] = value
    return "/" + "/".join(segments), known


def _request(client, method: str, path: str, w, headers: dict, params: dict | None = None):
    """One call with a body that names alice's rows where the route takes one."""
    template = path
    url, _ = _fill(path, w)
    body = _BODIES.get((method, template))
    kwargs: dict = {"headers": headers, "params": params}
    if body is not None:
        kwargs.update(body(w))
    elif method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = {}
    return client.request(method, url, **kwargs)


_BODIES = {
    ("POST", "/v1/datasets"): lambda w: {"files": {"file": ("again.csv", w["content"])}},
    ("POST", "/v1/rankings"): lambda w: {"json": {"target": w["dataset"]["id"], "candidates": "tasks"}},
    ("POST", "/v1/sources"): lambda w: {"json": {"dataset": w["source_dataset"]["id"], "name": "stolen",
                                                 "train_esm": False}},
    ("POST", "/v1/feedback"): lambda w: {"json": {"source": w["source"], "target": w["dataset"]["id"],
                                                  "metric": "accuracy", "value": 0.1}},
    ("POST", "/v1/keys"): lambda w: {"json": {"owner": "mallory", "scopes": ["read", "write", "admin"]}},
    ("PATCH", "/v1/models/{name}"): lambda w: {"json": {"enabled": False}},
}

# what bob (another owner, read+write, no admin) gets from each known route called with alice's rows
_BOB = {
    ("GET", "/v1/datasets/{dataset_id}"): 404,
    ("DELETE", "/v1/datasets/{dataset_id}"): 404,
    ("GET", "/v1/sources/{name}"): 404,
    ("DELETE", "/v1/sources/{name}"): 404,
    ("GET", "/v1/rankings/{ranking_id}"): 404,
    ("GET", "/v1/jobs/{job_id}"): 404,
    ("DELETE", "/v1/jobs/{job_id}"): 404,
    ("GET", "/v1/models/{name}"): 404,
    ("PATCH", "/v1/models/{name}"): 404,
    ("DELETE", "/v1/models/{name}"): 404,
    ("GET", "/v1/sources/{name}/esm"): 404,
    ("POST", "/v1/rankings"): 404,
    ("POST", "/v1/sources"): 404,
    ("POST", "/v1/feedback"): 404,
    ("POST", "/v1/datasets"): 201,  # the same content: bob's own new row, not alice's
    ("GET", "/v1/keys"): 403,
    ("POST", "/v1/keys"): 403,
    ("DELETE", "/v1/keys/{key_id}"): 403,
}


_READ_OK = {("GET", p) for p in ("/v1/datasets", "/v1/datasets/{dataset_id}", "/v1/sources", "/v1/sources/{name}",
                                 "/v1/rankings/{ranking_id}", "/v1/jobs/{job_id}", "/v1/transfer-matrix",
                                 "/v1/feedback", "/v1/estimators")}


def _no_leak(w, response, where: str) -> None:
    """None of alice's ids and names in the response, except those the caller sent itself."""
    text = response.text
    request = response.request
    sent = str(request.url) + request.read().decode("utf-8", "replace")
    for secret in _secrets(w):
        if secret not in sent:
            assert secret not in text, f"{where}: another owner sees {secret!r}: {text[:500]}"


def _same_as_missing(client, method: str, path: str, w, headers: dict, response, where: str) -> None:
    """Alice's row answers bob exactly as a row that does not exist (no existence leak)."""
    url, _ = _fill(path, w)
    ghost = {w["dataset"]["id"]: "0" * 32, w["source"]: "no-such-source", w["ranking"]: "1" * 32,
             w["job"]: "2" * 32}
    if w["model"]:
        ghost[w["model"]] = "no-such-model"
    ghost_url = url
    for real, fake in ghost.items():
        ghost_url = ghost_url.replace(real, fake)
    if ghost_url == url:
        return
    kwargs: dict = {"headers": headers}
    body = _BODIES.get((method, path))
    if body is not None:
        kwargs.update(body(w))
    elif method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = {}
    other = client.request(method, ghost_url, **kwargs)
    detail = response.json()["detail"]
    for real, fake in ghost.items():
        detail = detail.replace(real, fake)
    assert (other.status_code, other.json()["detail"]) == (response.status_code, detail), where


def test_every_v1_endpoint_for_four_clients(world):
    w, client = world, world["client"]
    routes = _routes(client.app)
    assert ("GET", "/v1/datasets/{dataset_id}") in routes and ("POST", "/v1/keys") in routes
    k = w["keys"]
    for method, path in routes:
        where = f"{method} {path}"
        # no key, a wrong key, a well-formed key of a revoked-or-unknown id
        for headers in ({}, _h("wrong"), _h("trk_00000000_" + "x" * 43)):
            r = _request(client, method, path, w, headers)
            assert r.status_code == 401, f"{where} with {headers}: {r.status_code} {r.text[:300]}"
            assert r.json()["detail"]
            _no_leak(w, r, where)
        # bob: another owner
        r = _request(client, method, path, w, _h(k["bob"]))
        assert r.status_code < 500, f"{where} (bob): {r.status_code} {r.text[:300]}"
        _no_leak(w, r, where + " (bob)")
        expected = _BOB.get((method, path))
        if expected is not None:
            assert r.status_code == expected, f"{where} (bob): {r.status_code} {r.text[:300]}"
        if "{" in path and r.status_code == 404:
            _same_as_missing(client, method, path, w, _h(k["bob"]), r, where)
        elif _fill(path, w)[1] and "{" in path:
            assert r.status_code in (403, 404), f"{where} (bob) on alice's row: {r.status_code} {r.text[:300]}"
        # alice's read-only key: reads her rows, never writes
        r = _request(client, method, path, w, _h(k["alice_ro"]))
        assert r.status_code < 500, f"{where} (read-only): {r.status_code} {r.text[:300]}"
        if method == "GET" and not path.startswith("/v1/keys"):
            assert r.status_code not in (401, 403), f"{where} (read-only): {r.status_code} {r.text[:300]}"
            if (method, path) in _READ_OK:
                assert r.status_code == 200, f"{where} (read-only): {r.status_code} {r.text[:300]}"
        else:
            assert r.status_code == 403, f"{where} (read-only): {r.status_code} {r.text[:300]}"
    # alice still has everything (bob's DELETEs were 404)
    A = _h(k["alice"])
    assert client.get(f"/v1/datasets/{w['dataset']['id']}", headers=A).status_code == 200
    assert client.get(f"/v1/sources/{w['source']}", headers=A).status_code == 200
    assert client.get(f"/v1/rankings/{w['ranking']}", headers=A).json()["status"] == "done"


def test_lists_and_matrix_show_only_own_and_public_rows(world):
    w, client, k = world, world["client"], world["keys"]
    A, B = _h(k["alice"]), _h(k["bob"])
    # lists, the matrix (JSON and CSV), feedback, sources: alice sees hers, bob none of them
    for url in ("/v1/datasets", "/v1/sources", "/v1/feedback", "/v1/transfer-matrix",
                "/v1/transfer-matrix?format=csv", "/v1/jobs", "/v1/rankings"):
        rb = client.get(url, headers=B)
        if rb.status_code in (404, 405) and url in ("/v1/jobs", "/v1/rankings"):
            continue  # listing endpoints not present in this build
        assert rb.status_code == 200, (url, rb.text)
        _no_leak(w, rb, url)
    mine = client.get("/v1/transfer-matrix", headers=A).json()
    assert w["dataset"]["name"] in mine["targets"] and "alice-private-src" in mine["sources"]
    assert "public-src" in {t["name"] for t in client.get("/v1/sources", headers=B).json()["tasks"]}
    assert client.get(f"/v1/transfer-matrix?target={w['dataset']['id']}", headers=B).status_code == 404
    assert [d["id"] for d in client.get("/v1/datasets", headers=A).json()["datasets"]] \
        == [w["source_dataset"]["id"], w["dataset"]["id"]]
    assert {f["note"] for f in client.get("/v1/feedback", headers=A).json()["feedback"]} == {"alice-secret-note"}

    # bob uploads alice's exact content: his own row, and her cached scores serve him (same content)
    r = client.post("/v1/datasets", files={"file": ("bob.csv", w["content"])}, headers=B)
    assert r.status_code == 201 and r.json()["id"] != w["dataset"]["id"] and r.json()["name"] == "bob"
    assert client.post("/v1/datasets", files={"file": ("bob2.csv", w["content"])}, headers=B).status_code == 200
    bob_ds = r.json()["id"]
    out = rank_as(client, {"target": bob_ds, "candidates": "tasks"}, B)
    assert {e["source"] for e in out["ranking"]} == {"public-src"}  # never alice's source
    assert out["computed"] == 0  # alice's ranking already scored this content against the public source
    _no_leak(w, client.get(f"/v1/rankings/{out['id']}", headers=B), "bob's ranking")
    bm = client.get("/v1/transfer-matrix", headers=B).json()
    assert bm["targets"] == ["bob"] and bm["sources"] == ["public-src"]
    _no_leak(w, client.get("/v1/transfer-matrix?format=csv", headers=B), "bob's matrix")
    # deleting bob's copy keeps alice's cached scores (content still stored by her)
    n_before = len(mine["entries"])
    assert client.delete(f"/v1/datasets/{bob_ds}", headers=B).json()["scores_removed"] == 0
    assert len(client.get("/v1/transfer-matrix", headers=A).json()["entries"]) == n_before


def test_public_catalogue_is_read_by_all_and_changed_by_admins(world):
    w, client, k = world, world["client"], world["keys"]
    B, O = _h(k["bob"]), _h(k["ops"])
    assert client.get("/v1/sources/public-src", headers=B).json()["owner"] == "public"
    assert client.get(f"/v1/datasets/{w['public_dataset']}", headers=B).status_code == 200
    r = client.delete("/v1/sources/public-src", headers=B)
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    assert client.delete(f"/v1/datasets/{w['public_dataset']}", headers=B).status_code == 403
    # an admin of another owner still cannot see alice's rows; it may change the catalogue
    assert client.get(f"/v1/datasets/{w['dataset']['id']}", headers=O).status_code == 404
    assert client.delete("/v1/sources/public-src", headers=O).status_code == 200
    assert "public-src" not in {t["name"] for t in client.get("/v1/sources", headers=B).json()["tasks"]}


def test_open_mode_is_one_local_owner(make_client, tmp_path):
    from app.services import keys as keys_svc

    client = make_client(tmp_path / "open", auth="open")
    r = client.post("/v1/datasets", files={"file": ("a.csv", csv_bytes(*make_texts(12, 2)))})
    assert r.status_code == 201 and r.json()["owner"] == "local"
    # a key for the local owner sees the same rows; another owner does not
    _i, local = keys_svc.create(client.app.state.ctx, "local", "read")
    _i, other = keys_svc.create(client.app.state.ctx, "other", "read")
    assert client.get(f"/v1/datasets/{r.json()['id']}", headers=_h(local)).status_code == 200
    assert client.get(f"/v1/datasets/{r.json()['id']}", headers=_h(other)).status_code == 404
    assert client.get("/v1/datasets", headers=_h("bad")).status_code == 401  # a key sent is a key checked
    assert client.get("/v1/datasets").status_code == 200  # explicit open mode: no key needed
    assert client.post("/v1/keys", json={"owner": "x"}).status_code == 401  # never key management


def test_migration_moves_existing_rows_to_owners(db_url, tmp_path):
    """Rows written at revision 0001 (a user dataset, a demo source, a job, a key) after 0003:
    the user's rows belong to ``local``, the demo catalogue to ``public``, and the old key still
    authenticates although its stored hash is now salted."""
    import hashlib

    from sqlalchemy import text

    from app.core.config import Settings
    from app.db.session import make_engine, upgrade
    from app.services import keys as keys_svc
    from app.services.context import Context

    engine = make_engine(db_url)
    upgrade(db_url, engine, "0001")
    old_key = "trk_abcdef12_" + "k" * 32
    now = "2026-01-01 00:00:00"
    with engine.begin() as c:
        for ds_id, sha in (("d1", "a" * 64), ("d2", "b" * 64)):
            c.execute(text("INSERT INTO datasets (id, name, sha256, kind, n_examples, n_classes, label_names, "
                           "labels_blob, extra_blobs, meta, created_at) VALUES (:i, :i, :s, 'text', 2, 2, '[]', "
                           "'x.npy', '{}', '{}', :t)"), {"i": ds_id, "s": sha, "t": now})
        c.execute(text("INSERT INTO jobs (id, kind, status, progress, result, created_at) VALUES "
                       "('j1', 'train_esm', 'done', 1.0, '{}', :t), ('j2', 'ranking', 'done', 1.0, '{}', :t)"),
                  {"t": now})
        c.execute(text("INSERT INTO source_tasks (name, dataset_id, description, licence, origin, status, "
                       "base_encoder, esm_meta, job_id, created_at) VALUES ('demo-x', 'd2', '', '', 'demo', "
                       "'ready', :b, '{}', 'j1', :t)"), {"b": FAST_BASE, "t": now})
        c.execute(text("INSERT INTO api_keys (id, owner, scopes, key_hash, created_at) VALUES "
                       "('abcdef12', 'carol', 'read,write,admin', :h, :t)"),
                  {"h": hashlib.sha256(old_key.encode()).hexdigest(), "t": now})
    upgrade(db_url, engine)
    with engine.connect() as c:
        owners = dict(c.execute(text("SELECT id, owner FROM datasets")).all())
        tenants = dict(c.execute(text("SELECT id, tenant FROM jobs")).all())
        src_owner = c.execute(text("SELECT owner FROM source_tasks")).scalar()
        key_hash, salt = c.execute(text("SELECT key_hash, salt FROM api_keys")).one()
    engine.dispose()
    assert owners == {"d1": "local", "d2": "public"} and src_owner == "public"
    assert tenants == {"j1": "public", "j2": "local"}
    assert salt and key_hash != hashlib.sha256(old_key.encode()).hexdigest()
    settings = Settings.from_env({}, data_dir=tmp_path / "d", database_url=db_url, seed_demo=False,
                                 base_encoder=FAST_BASE, log_level="WARNING")
    ctx = Context.open(settings)
    try:
        p = keys_svc.authenticate(ctx, f"Bearer {old_key}", "admin")
        assert (p.owner, p.key_id) == ("carol", "abcdef12")
        with ctx.Session() as s:
            scheme, new_hash = s.execute(text("SELECT hash_scheme, key_hash FROM api_keys")).one()
        assert scheme == "hmac-sha256" and new_hash != key_hash  # re-hashed on first use
        ctx.auth_cache.clear()
        assert keys_svc.authenticate(ctx, f"Bearer {old_key}", "read").owner == "carol"
    finally:
        ctx.close()
    # a downgrade would merge two owners' rows into one unique content: refused, nothing changed
    from app.db.session import downgrade

    engine = make_engine(db_url)
    try:
        with engine.begin() as c:
            c.execute(text("INSERT INTO datasets (id, owner, name, sha256, kind, n_examples, n_classes, label_names, "
                           "labels_blob, extra_blobs, meta, created_at) VALUES ('d3', 'bob', 'x', :s, 'text', 2, 2, "
                           "'[]', 'x.npy', '{}', '{}', :t)"), {"s": "a" * 64, "t": now})
        with pytest.raises(RuntimeError, match="more than one owner"):
            downgrade(db_url, engine, "0001")
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM datasets")).scalar() == 3
            assert c.execute(text("SELECT count(*) FROM api_keys WHERE salt IS NOT NULL")).scalar() == 1
    finally:
        engine.dispose()


def _ready_model(client, name: str, headers: dict, timeout: float = 120.0) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/v1/models/{name}", headers=headers)
        assert r.status_code == 200, r.text
        if r.json()["status"] != "loading" or time.monotonic() > deadline:
            return r.json()
        time.sleep(0.05)


def test_user_models_are_owned(world):
    """Alice's registered model: hers to list, read, rank with, disable and delete; bob and an admin
    of another owner get the answers of a model that does not exist, and public models change only
    with the admin scope."""
    from byo_helpers import imagefolder_zip, synthetic_images

    w, client, k = world, world["client"], world["keys"]
    if not w["model"]:
        pytest.skip("no POST /v1/models in this build")
    A, B, O = _h(k["alice"]), _h(k["bob"]), _h(k["ops"])
    name = w["model"]
    mine = _ready_model(client, name, A)
    assert mine["status"] == "ready" and mine["owner"] == "alice", mine
    assert name in {m["name"] for m in client.get("/v1/models", headers=A).json()["models"]}
    assert name in {m["name"] for m in client.get("/v1/sources", headers=A).json()["models"]}
    ims, ylab = synthetic_images(24, 3)
    pics = imagefolder_zip(ims, ylab)
    for headers in (B, O):
        for url in ("/v1/models", "/v1/models?modality=image", "/v1/sources"):
            r = client.get(url, headers=headers)
            assert r.status_code == 200 and name not in r.text, (url, r.text[:300])
        for method, kwargs in (("GET", {}), ("PATCH", {"json": {"enabled": False}}), ("DELETE", {})):
            real = client.request(method, f"/v1/models/{name}", headers=headers, **kwargs)
            ghost = client.request(method, "/v1/models/no-such-model", headers=headers, **kwargs)
            assert real.status_code == ghost.status_code == 404, (method, real.text)
            assert real.json()["detail"].replace(name, "no-such-model") == ghost.json()["detail"]
        # ranking an own image target with alice's model: the answer for a model that does not exist
        r = client.post("/v1/datasets", files={"file": ("pics.zip", pics)}, headers=headers)
        assert r.status_code in (200, 201), r.text
        target = r.json()["id"]
        body = {"target": target, "candidates": "models"}
        real = client.post("/v1/rankings", json=dict(body, sources=[name]), headers=headers)
        ghost = client.post("/v1/rankings", json=dict(body, sources=["no-such-model"]), headers=headers)
        assert real.status_code == ghost.status_code == 422, real.text
        assert "unknown model candidate" in real.json()["detail"]
        assert real.json()["detail"].replace(name, "no-such-model") == ghost.json()["detail"]
        assert name not in ghost.json()["detail"]
    # alice ranks her own image target with her model
    r = client.post("/v1/datasets", files={"file": ("alice-pics.zip", pics)}, headers=A)
    assert r.status_code in (200, 201), r.text
    out = rank_as(client, {"target": r.json()["id"], "candidates": "models", "sources": [name]}, A)
    assert [e["source"] for e in out["ranking"]] == [name]
    # a public (built-in) model: read by all, changed by an admin only
    assert client.get(f"/v1/models/{FAST_BASE}", headers=B).json()["owner"] == "public"
    r = client.patch(f"/v1/models/{FAST_BASE}", json={"enabled": True}, headers=B)
    assert r.status_code == 403 and "admin" in r.json()["detail"], r.text
    assert client.patch(f"/v1/models/{FAST_BASE}", json={"enabled": True}, headers=O).status_code == 200
    # alice's own write: disable, then delete
    assert client.patch(f"/v1/models/{name}", json={"enabled": False}, headers=A).json()["enabled"] is False
    assert client.delete(f"/v1/models/{name}", headers=A).json()["deleted"] is True
    assert client.get(f"/v1/models/{name}", headers=A).status_code == 404


def test_catalogue_imports_and_bulk_registrations_are_owned(world, tmp_path):
    """ESMs imported through the API belong to the caller (CLI/service default: the public catalogue);
    the listing, the export and the base-encoder lookup see only the caller's and the public rows."""
    from test_byo_catalogue import write_hfselect_esm, zip_dir

    from app.db.models import EncoderRow
    from app.services import catalogue as catalogue_svc

    w, client, ctx, k = world, world["client"], world["ctx"], world["keys"]
    A, B, O = _h(k["alice"]), _h(k["bob"]), _h(k["ops"])
    with ctx.Session() as s:
        dim = s.get(EncoderRow, FAST_BASE).dim
    root = tmp_path / "alice-esms"
    write_hfselect_esm(root / "alice-esm", dim, None, 0)
    r = client.post("/v1/sources/import", files={"file": ("e.zip", zip_dir(root))}, data={"base_encoder": FAST_BASE},
                    headers=A)
    assert r.status_code == 201, r.text
    assert client.get("/v1/sources/alice-esm", headers=A).json()["owner"] == "alice"
    assert "alice-esm" in {t["name"] for t in client.get("/v1/sources", headers=A).json()["tasks"]}
    assert client.get("/v1/sources/alice-esm/esm?format=json", headers=A).json()["dim"] == dim
    assert client.get("/v1/sources/alice-esm/esm", headers=A).headers["content-type"] == "application/zip"
    for headers in (B, O):
        listing = client.get("/v1/sources?has_esm=true", headers=headers)
        assert listing.status_code == 200 and "alice-esm" not in listing.text and "alice-private" not in listing.text
        listing = client.get("/v1/sources", headers=headers).json()  # per-base counts: visible sources only
        assert sum(listing["base_encoders"].values()) == listing["total"] == len(listing["tasks"])
        for fmt in ("zip", "json"):
            real = client.get(f"/v1/sources/alice-esm/esm?format={fmt}", headers=headers)
            ghost = client.get(f"/v1/sources/no-such-esm/esm?format={fmt}", headers=headers)
            assert real.status_code == ghost.status_code == 404, real.text
            assert real.json()["detail"].replace("alice-esm", "no-such-esm") == ghost.json()["detail"]
        # alice's dataset in a manifest: the answer for a dataset that does not exist
        real = client.post("/v1/sources/bulk", json={"sources": [{"dataset": w["source_dataset"]["id"],
                                                                  "name": "x", "train_esm": False}]}, headers=headers)
        ghost = client.post("/v1/sources/bulk", json={"sources": [{"dataset": "0" * 32, "name": "x",
                                                                   "train_esm": False}]}, headers=headers)
        assert real.status_code == ghost.status_code == 404, real.text
        assert real.json()["detail"].replace(w["source_dataset"]["id"], "0" * 32) == ghost.json()["detail"]
    if w["model"]:  # alice's model is no base encoder for bob's import
        other = tmp_path / "bob-esms"
        write_hfselect_esm(other / "bob-esm", dim, None, 1)
        real = client.post("/v1/sources/import", files={"file": ("e.zip", zip_dir(other))},
                           data={"base_encoder": w["model"]}, headers=B)
        ghost = client.post("/v1/sources/import", files={"file": ("e.zip", zip_dir(other))},
                            data={"base_encoder": "no-such-model"}, headers=B)
        assert real.status_code == ghost.status_code == 422, real.text
        assert real.json()["detail"].replace(w["model"], "no-such-model") == ghost.json()["detail"]
        assert w["model"] not in ghost.json()["detail"]
    # bob's manifest registers bob's sources
    texts, labels = make_texts(30, 2, seed=9, vocab_shift=2)
    bob_ds = client.post("/v1/datasets", files={"file": ("bob-src.csv", csv_bytes(texts, labels))}, headers=B).json()
    r = client.post("/v1/sources/bulk", json={"sources": [{"dataset": bob_ds["id"], "name": "bob-src",
                                                           "train_esm": False}]}, headers=B)
    assert r.status_code == 202, r.text
    assert client.get("/v1/sources/bob-src", headers=B).json()["owner"] == "bob"
    assert client.get("/v1/sources/bob-src", headers=A).status_code == 404
    # the CLI's import (the service default) fills the public catalogue, seen by everyone
    pub = tmp_path / "public-esms"
    write_hfselect_esm(pub / "public-esm", dim, None, 2)
    assert catalogue_svc.import_dir(ctx, pub, FAST_BASE)["sources"] == ["public-esm"]
    for headers in (A, B):
        assert client.get("/v1/sources/public-esm", headers=headers).json()["owner"] == "public"
        assert client.get("/v1/sources/public-esm/esm?format=json", headers=headers).status_code == 200
