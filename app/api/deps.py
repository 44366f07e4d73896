"""Request dependencies: the service context and API-key auth."""
from __future__ import annotations

from fastapi import Request

from app.services import keys as keys_svc


def get_ctx(request: Request):
    return request.app.state.ctx


def require(scope: str | None = None):
    """Auth dependency: GET needs ``read``, other methods ``write``; ``scope`` overrides."""

    def dep(request: Request) -> dict | None:
        needed = scope or ("read" if request.method in ("GET", "HEAD", "OPTIONS") else "write")
        return keys_svc.authorize(request.app.state.ctx, request.headers.get("authorization"), needed)

    return dep
