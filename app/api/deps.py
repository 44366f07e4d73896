"""Request dependencies: the service context (``CtxDep``) and the authenticated principal (``AuthDep``).

Routes declare them as typed parameters, e.g. ``def get_x(ctx: CtxDep, principal: AuthDep)``, and
pass ``principal.owner`` (and ``principal.is_admin`` where the public catalogue may change) to
services. ``AuthDep`` needs the ``read`` scope for GET/HEAD/OPTIONS and ``write`` otherwise;
``AdminKeyDep`` needs an admin *key*, never the anonymous caller of open mode. The modes and the
keys are described in ``app.services.keys``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.services import keys as keys_svc
from app.services.context import Context
from app.services.keys import Principal

__all__ = ["AdminKeyDep", "AuthDep", "CtxDep", "Principal", "authenticate", "authenticate_admin_key", "get_ctx",
           "require"]

_bearer = HTTPBearer(auto_error=False, description="an API key from `transferrank keys create` or "
                     "TRANSFERRANK_BOOTSTRAP_ADMIN_KEY (required once a key exists, or off loopback)")
_Cred = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


CtxDep = Annotated[Context, Depends(get_ctx)]


def _scope_for(request: Request) -> str:
    return "read" if request.method in ("GET", "HEAD", "OPTIONS") else "write"


def require(scope: str | None = None) -> Callable[..., Principal]:
    """Auth dependency: GET needs ``read``, other methods ``write``; ``scope`` overrides."""

    def dep(request: Request, ctx: CtxDep, _cred: _Cred = None) -> Principal:
        return keys_svc.authenticate(ctx, request.headers.get("authorization"), scope or _scope_for(request))

    return dep


def authenticate_admin_key(request: Request, ctx: CtxDep, _cred: _Cred = None) -> Principal:
    return keys_svc.authenticate(ctx, request.headers.get("authorization"), "admin", key_required=True)


#: The default check (read for GET, write otherwise). Routers use ``Depends(authenticate)`` and
#: routes take ``principal: AuthDep``: FastAPI caches one callable per request, so it runs once.
authenticate = require()
AuthDep = Annotated[Principal, Depends(authenticate)]
AdminKeyDep = Annotated[Principal, Depends(authenticate_admin_key)]
