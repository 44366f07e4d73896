"""Typed dependencies: ``CtxDep`` gives the service context, ``AuthDep`` the caller's key, checked
once per request even when a router and a route both ask for it; the CLI passes its settings
down without writing them into the environment."""
from __future__ import annotations

import os

from fastapi import APIRouter, Depends
from fastapi.testclient import TestClient

from app.api.deps import AuthDep, CtxDep, authenticate
from app.main import create_app
from app.services import keys as keys_svc


def test_auth_dep_resolves_the_key_once_per_request(settings_factory, monkeypatch):
    app = create_app(settings_factory())
    probe = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)])

    @probe.get("/whoami")
    def whoami(ctx: CtxDep, principal: AuthDep) -> dict[str, object]:
        return {"owner": principal.owner, "key": principal.key_id, "base_encoder": ctx.settings.base_encoder}

    app.include_router(probe)
    calls = []
    real = keys_svc.authenticate
    monkeypatch.setattr(keys_svc, "authenticate", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    with TestClient(app) as client:
        assert client.get("/v1/whoami").json()["key"] is None  # no key yet: the anonymous local owner
        info, key = keys_svc.create(app.state.ctx, "alice", ["read"])
        calls.clear()
        r = client.get("/v1/whoami", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.json()["owner"] == "alice" and r.json()["key"] == info["id"]
        assert calls == ["read"]  # the router's check and the route's AuthDep: one call
        assert client.get("/v1/whoami").status_code == 401


def test_cli_settings_do_not_touch_the_environment(tmp_path, monkeypatch):
    from app.cli import build_parser, main, serve_settings

    monkeypatch.delenv("TRANSFERRANK_DATA_DIR", raising=False)
    monkeypatch.delenv("TRANSFERRANK_WARM_UP", raising=False)
    before = dict(os.environ)
    assert main(["migrate", "--data-dir", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "transferrank.db").is_file()
    assert dict(os.environ) == before
    args = build_parser().parse_args(["serve", "--data-dir", str(tmp_path / "s")])
    assert serve_settings(args).warm_up is True and serve_settings(args).data_dir == tmp_path / "s"
    monkeypatch.setenv("TRANSFERRANK_WARM_UP", "0")
    assert serve_settings(args).warm_up is False
    assert dict(os.environ) == {**before, "TRANSFERRANK_WARM_UP": "0"}


def test_a_warm_up_cancelled_by_a_stopping_service_is_logged_not_raised(monkeypatch):
    """Stopping the service while encoders still load cancels their futures: one log line each,
    no exception from the done-callback."""
    from concurrent.futures import Future

    from app.services import startup

    lines: list[str] = []
    monkeypatch.setattr(startup.log, "info", lambda msg, *a: lines.append(msg % a))
    monkeypatch.setattr(startup.log, "warning", lambda msg, *a: lines.append(msg % a))
    errors: list[str] = []
    monkeypatch.setattr("concurrent.futures._base.LOGGER.exception", lambda msg, *a: errors.append(msg % a))
    fut: Future = Future()
    fut.add_done_callback(startup._warm_up_done("minilm-l6", 0.0))
    assert fut.cancel()
    assert lines == ["encoder minilm-l6: warm-up cancelled (the service is stopping)"] and errors == []
