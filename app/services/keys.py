"""API keys. A key is ``trk_<id>_<secret>``; only its sha256 is stored. Once any active key
exists, every /v1 call needs ``Authorization: Bearer <key>`` with the right scope:
``read`` (GET), ``write`` (POST/DELETE), ``admin`` (everything, key management)."""
from __future__ import annotations

import hashlib
import secrets
import time
from typing import TYPE_CHECKING

from sqlalchemy import select

from app.core.errors import Forbidden, Invalid, NotFound, Unauthorized
from app.db.models import ApiKey, iso, utcnow

if TYPE_CHECKING:
    from app.services.context import Context

SCOPES = ("read", "write", "admin")


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(scopes) -> list[str]:
    items = scopes.split(",") if isinstance(scopes, str) else list(scopes)
    items = [s.strip() for s in items if s.strip()]
    bad = [s for s in items if s not in SCOPES]
    if bad or not items:
        raise Invalid(f"scopes must be a non-empty subset of {', '.join(SCOPES)}; got {', '.join(items) or 'none'}")
    return sorted(set(items), key=SCOPES.index)


def key_dict(k: ApiKey) -> dict:
    return {"id": k.id, "owner": k.owner, "scopes": k.scopes.split(","), "active": k.revoked_at is None,
            "created_at": iso(k.created_at),
            "revoked_at": iso(k.revoked_at),
            "last_used_at": iso(k.last_used_at)}


def create(ctx: Context, owner: str, scopes) -> tuple[dict, str]:
    if not owner or not owner.strip():
        raise Invalid("a key needs an owner name")
    scopes = parse_scopes(scopes)
    key_id = secrets.token_hex(4)
    key = f"trk_{key_id}_{secrets.token_urlsafe(24)}"
    with ctx.Session.begin() as s:
        row = ApiKey(id=key_id, owner=owner.strip(), scopes=",".join(scopes), key_hash=_hash(key))
        s.add(row)
    ctx.auth_cache.clear()
    return key_dict(row), key


def list_all(ctx: Context) -> list[dict]:
    with ctx.Session() as s:
        return [key_dict(k) for k in s.scalars(select(ApiKey).order_by(ApiKey.created_at))]


def revoke(ctx: Context, key_id: str) -> dict:
    with ctx.Session.begin() as s:
        row = s.get(ApiKey, key_id)
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
    ctx.auth_cache.clear()
    return key_dict(row)


def any_active(ctx: Context) -> bool:
    cached = ctx.auth_cache.get("any")
    if cached is not None and time.monotonic() - cached[1] < 2.0:
        return cached[0]
    with ctx.Session() as s:
        value = s.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None
    ctx.auth_cache["any"] = (value, time.monotonic())
    return value


def authorize(ctx: Context, header: str | None, scope: str) -> dict | None:
    """Check an ``Authorization`` header for ``scope``; None when auth is off (no keys yet)."""
    if not any_active(ctx):
        return None
    if not header or not header.lower().startswith("bearer "):
        raise Unauthorized("this service requires an API key: send 'Authorization: Bearer <key>' "
                           "(create one with `transferrank keys create`)")
    key = header.split(None, 1)[1].strip()
    with ctx.Session.begin() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.key_hash == _hash(key)))
        if row is None or row.revoked_at is not None:
            raise Unauthorized("invalid or revoked API key")
        scopes = row.scopes.split(",")
        if scope not in scopes and "admin" not in scopes:
            raise Forbidden(f"this key (id {row.id}) lacks the '{scope}' scope; it has {', '.join(scopes)}")
        now = utcnow()
        last = row.last_used_at
        if last is not None and last.tzinfo is None:
            last = last.replace(tzinfo=now.tzinfo)
        if last is None or (now - last).total_seconds() > 60:  # not a write per request
            row.last_used_at = now
        return key_dict(row)
