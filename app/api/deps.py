"""Request dependencies: the service context (``CtxDep``) and the API-key principal (``AuthDep``).

Routes declare them as typed parameters, e.g. ``def get_x(ctx: CtxDep, key: AuthDep)``.
Authentication is off until the first API key exists; then every ``/v1`` call needs
``Authorization: Bearer <key>`` with the ``read`` scope (GET) or ``write`` (other methods);
``require("admin")`` asks for a given scope.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.services import keys as keys_svc
from app.services.context import Context

#: The resolved API key (``keys_svc.key_dict``: id, owner, scopes, ...), or None while auth is off.
Principal = dict[str, Any] | None

_bearer = HTTPBearer(auto_error=False, description="an API key from `transferrank keys create` "
                     "(required once a key exists)")


def get_ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


CtxDep = Annotated[Context, Depends(get_ctx)]


def _scope_for(request: Request) -> str:
    return "read" if request.method in ("GET", "HEAD", "OPTIONS") else "write"


def require(scope: str | None = None) -> Callable[..., Principal]:
    """Auth dependency: GET needs ``read``, other methods ``write``; ``scope`` overrides."""

    def dep(request: Request, ctx: CtxDep,
            _cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None) -> Principal:
        return keys_svc.authorize(ctx, request.headers.get("authorization"), scope or _scope_for(request))

    return dep


#: The default check (read for GET, write otherwise). Routers use ``Depends(authenticate)`` and
#: routes take ``key: AuthDep``: FastAPI caches one callable per request, so the key is checked once.
authenticate = require()
AuthDep = Annotated[Principal, Depends(authenticate)]
