"""Request dependencies: the service context and the authenticated principal.

``AuthDep`` resolves the caller (``app.services.keys.Principal``): GET/HEAD/OPTIONS need the
``read`` scope, other methods ``write``. ``AdminKeyDep`` needs an admin *key* (never the
anonymous caller of open mode). Routes pass ``principal.owner`` / the principal to services.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.services import keys as keys_svc
from app.services.context import Context
from app.services.keys import Principal

READ_METHODS = ("GET", "HEAD", "OPTIONS")


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


def authenticate(request: Request) -> Principal:
    needed = "read" if request.method in READ_METHODS else "write"
    return keys_svc.authenticate(request.app.state.ctx, request.headers.get("authorization"), needed)


def authenticate_admin_key(request: Request) -> Principal:
    return keys_svc.authenticate(request.app.state.ctx, request.headers.get("authorization"), "admin",
                                 key_required=True)


def require(scope: str | None = None):
    """Auth dependency for ``scope`` (default: by method, as ``authenticate``)."""
    if scope is None:
        return authenticate

    def dep(request: Request) -> Principal:
        return keys_svc.authenticate(request.app.state.ctx, request.headers.get("authorization"), scope)

    return dep


CtxDep = Annotated[Context, Depends(get_ctx)]
AuthDep = Annotated[Principal, Depends(authenticate)]
AdminKeyDep = Annotated[Principal, Depends(authenticate_admin_key)]
