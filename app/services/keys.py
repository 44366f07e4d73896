"""API keys, authentication modes and the principal (owner + scopes) of a request.

**Keys.** A key is ``trk_<id>_<secret>``: ``id`` is 8 hex digits used to find the row, ``secret``
32 random bytes (base64url). Only ``HMAC-SHA256(salt, key)`` with a random 16-byte salt per key is
stored, and it is compared with ``hmac.compare_digest``. A slow KDF (scrypt, PBKDF2) would add
nothing here: a key carries 256 random bits, so offline guessing is hopeless at any hash cost,
while every request (and every wrong key an anonymous client sends) would pay it. For the same
reason an operator-chosen bootstrap secret must be at least 32 characters. Rows written before
salting hold ``HMAC(salt, sha256(key))`` (scheme ``hmac-sha256-legacy``, migration 0003) and are
re-hashed with the current scheme the first time the key is used.

**Scopes.** ``read`` (GET), ``write`` (POST/DELETE of one's own data), ``admin`` (everything,
key management, writing the public catalogue). Data access is per owner for every key, admin
included: an owner sees its own rows and the public catalogue, never another owner's.

**Modes** (``TRANSFERRANK_AUTH``):

- ``auto`` (default): keys are required once any key was ever created on this database
  (revoking keys never reopens the service). Before that the service is open, but only when
  it is bound to a loopback address (or runs in-process); bound to any other address, every
  /v1 call is 401 until the first key exists.
- ``keys``: every /v1 call needs a key, from the first start.
- ``open``: no key is needed; every caller is the owner ``local`` (a request that does send a
  key is still checked and acts as that key's owner). Refused unless bound to loopback.

In every mode, key management (``/v1/keys``) needs an admin key: the first admin key comes from
``transferrank keys create --owner NAME --scopes read,write,admin`` or from
``TRANSFERRANK_BOOTSTRAP_ADMIN_KEY`` (installed as key id ``bootstrap`` at start), never from an
anonymous request. Revoking the last active admin key is refused (409).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from app.core.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from app.core.logging import get_logger
from app.db.models import DEFAULT_OWNER, PUBLIC_OWNER, ApiKey, iso, utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.core.config import Settings
    from app.services.context import Context

log = get_logger("auth")

SCOPES = ("read", "write", "admin")
MODES = ("auto", "keys", "open")
SCHEME = "hmac-sha256"
LEGACY_SCHEME = "hmac-sha256-legacy"
BOOTSTRAP_ID = "bootstrap"
MIN_BOOTSTRAP_CHARS = 32
MAX_TOKEN_CHARS = 512
_KEY_RE = re.compile(r"trk_([0-9a-f]{8})_[A-Za-z0-9_-]{16,}")
_OWNER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}")
_CACHE_SECONDS = 2.0
_CACHE_MAX = 1024

CREATE_HINT = ("create one with `transferrank keys create --owner NAME --scopes read,write,admin` on the "
               "server's data dir, or start the service with TRANSFERRANK_BOOTSTRAP_ADMIN_KEY set")


@dataclass(frozen=True)
class Principal:
    """Who makes a request: the owner whose rows it may see, its scopes, and its key (None: open mode)."""

    owner: str
    scopes: tuple[str, ...]
    key_id: str | None = None

    def has(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    @property
    def visible_owners(self) -> tuple[str, str]:
        """Owners whose rows this principal may read: itself and the public catalogue."""
        return (self.owner, PUBLIC_OWNER)


LOCAL = Principal(DEFAULT_OWNER, SCOPES, None)
"""The caller of open mode (and of the CLI, which acts on the data dir directly)."""


# ---------------------------------------------------------------------- modes
def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; None (in-process, not bound) counts as loopback."""
    if host is None:
        return True
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_settings(settings: Settings) -> None:
    """Refuse settings that would open the service beyond loopback or carry a weak bootstrap secret."""
    mode = getattr(settings, "auth", "auto")
    if mode not in MODES:
        raise ValueError(f"TRANSFERRANK_AUTH must be one of {', '.join(MODES)}, got {mode!r}")
    host = getattr(settings, "host", None)
    if mode == "open" and not is_loopback(host):
        raise ValueError(f"TRANSFERRANK_AUTH=open is allowed only on a loopback address, not {host}: bind "
                         "--host 127.0.0.1, or use API keys (TRANSFERRANK_AUTH=auto or keys)")
    secret = getattr(settings, "bootstrap_admin_key", None)
    if secret is not None and len(secret.strip()) < MIN_BOOTSTRAP_CHARS:
        raise ValueError(f"TRANSFERRANK_BOOTSTRAP_ADMIN_KEY must have at least {MIN_BOOTSTRAP_CHARS} characters "
                         "(e.g. `openssl rand -hex 32`)")


def any_key(ctx: Context) -> bool:
    """Whether a key was ever created here (revoked ones count). True is final; False is rechecked."""
    cached = ctx.auth_cache.get("any")
    if cached is not None and (cached[0] or time.monotonic() - cached[1] < _CACHE_SECONDS):
        return bool(cached[0])
    with ctx.Session() as s:
        value = s.scalar(select(ApiKey.id).limit(1)) is not None
    ctx.auth_cache["any"] = (value, time.monotonic())
    return value


def effective_mode(ctx: Context) -> str:
    """``open`` or ``keys`` right now, or ``closed`` (auto mode off loopback with no key yet)."""
    settings = ctx.settings
    mode = getattr(settings, "auth", "auto")
    if mode in ("open", "keys"):
        return mode
    if any_key(ctx):
        return "keys"
    return "open" if is_loopback(getattr(settings, "host", None)) else "closed"


def describe_mode(ctx: Context) -> str:
    mode = effective_mode(ctx)
    host = getattr(ctx.settings, "host", None) or "in-process"
    if mode == "open":
        why = "explicit TRANSFERRANK_AUTH=open" if ctx.settings.auth == "open" else "no API key exists yet"
        return (f"AUTH OPEN on {host} ({why}): any local client acts as owner '{DEFAULT_OWNER}' without a key; "
                "create a key to require keys")
    if mode == "closed":
        return (f"auth: no API key exists yet and the service is bound to {host}, so every /v1 call is refused "
                f"until one exists: {CREATE_HINT}")
    return "auth: API keys required for every /v1 call"


# ---------------------------------------------------------------------- hashing
def _digest(salt_hex: str, token: str, scheme: str) -> str:
    msg = hashlib.sha256(token.encode()).hexdigest() if scheme == LEGACY_SCHEME else token
    return hmac.new(bytes.fromhex(salt_hex), msg.encode(), hashlib.sha256).hexdigest()


def _hash_new(token: str) -> tuple[str, str]:
    salt = secrets.token_hex(16)
    return salt, _digest(salt, token, SCHEME)


def _matches(row: ApiKey | None, token: str) -> bool:
    if row is None or row.salt is None:
        if row is not None:  # a row written by code older than the salted scheme: plain sha256
            return hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), row.key_hash)
        hmac.compare_digest(_digest("00" * 16, token, SCHEME), "0" * 64)  # same work for unknown ids
        return False
    return hmac.compare_digest(_digest(row.salt, token, row.hash_scheme or SCHEME), row.key_hash)


# ---------------------------------------------------------------------- keys
def parse_scopes(scopes: str | Sequence[str]) -> list[str]:
    items = scopes.split(",") if isinstance(scopes, str) else list(scopes)
    items = [s.strip() for s in items if s.strip()]
    bad = [s for s in items if s not in SCOPES]
    if bad or not items:
        raise Invalid(f"scopes must be a non-empty subset of {', '.join(SCOPES)}; got {', '.join(items) or 'none'}")
    return sorted(set(items), key=SCOPES.index)


def check_owner(owner: str | None) -> str:
    owner = (owner or "").strip()
    if not _OWNER_RE.fullmatch(owner):
        raise Invalid("an owner name is 1-128 characters: letters, digits and _ . @ + - (starting with a letter "
                      f"or digit); got {owner[:40]!r}")
    if owner == PUBLIC_OWNER:
        raise Invalid(f"the owner name {PUBLIC_OWNER!r} is reserved for the public catalogue")
    return owner


def key_dict(k: ApiKey) -> dict[str, Any]:
    return {"id": k.id, "owner": k.owner, "scopes": k.scopes.split(","), "active": k.revoked_at is None,
            "created_at": iso(k.created_at),
            "revoked_at": iso(k.revoked_at),
            "last_used_at": iso(k.last_used_at)}


def _forget(ctx: Context) -> None:
    ctx.auth_cache.clear()


def create(ctx: Context, owner: str, scopes: str | Sequence[str]) -> tuple[dict[str, Any], str]:
    """A new key for ``owner``; returns ``(info, key)``. The key is shown once and never stored."""
    owner = check_owner(owner)
    scopes = parse_scopes(scopes)
    key_id = secrets.token_hex(4)
    key = f"trk_{key_id}_{secrets.token_urlsafe(32)}"
    salt, digest = _hash_new(key)
    with ctx.Session.begin() as s:
        row = ApiKey(id=key_id, owner=owner, scopes=",".join(scopes), key_hash=digest, salt=salt, hash_scheme=SCHEME)
        s.add(row)
    _forget(ctx)
    log.info("API key %s created for owner %s (%s)", key_id, owner, ",".join(scopes))
    return key_dict(row), key


def list_all(ctx: Context) -> list[dict[str, Any]]:
    with ctx.Session() as s:
        return [key_dict(k) for k in s.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))]


def _active_admins(s: Session, lock: bool) -> list[ApiKey]:
    """Active admin keys; ``lock``: hold them (PostgreSQL row locks, SQLite the write lock) until the
    transaction ends, so two concurrent revocations of the last two admins cannot both succeed."""
    q = select(ApiKey).where(ApiKey.revoked_at.is_(None))
    if lock:
        if s.get_bind().dialect.name == "sqlite":  # a write first takes the database's write lock
            s.execute(update(ApiKey).where(ApiKey.id == "").values(scopes=ApiKey.scopes))
        else:
            q = q.with_for_update()
    return [k for k in s.scalars(q) if "admin" in k.scopes.split(",")]


def revoke(ctx: Context, key_id: str) -> dict[str, Any]:
    """Revoke a key; refused (409) for the last active admin key, so the service never locks its admins out."""
    with ctx.Session.begin() as s:
        admins = _active_admins(s, lock=True)
        row = s.get(ApiKey, key_id)
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}; list them with GET /v1/keys")
        if row.revoked_at is None:
            if "admin" in row.scopes.split(",") and not [k for k in admins if k.id != row.id]:
                raise Conflict(f"key {key_id} is the last active admin key; create another admin key first "
                               "(POST /v1/keys or `transferrank keys create --scopes read,write,admin`)")
            row.revoked_at = utcnow()
    _forget(ctx)
    log.info("API key %s (owner %s) revoked", row.id, row.owner)
    return key_dict(row)


def bootstrap(ctx: Context) -> dict[str, Any] | None:
    """Install ``TRANSFERRANK_BOOTSTRAP_ADMIN_KEY`` as the admin key ``bootstrap`` (idempotent).

    A changed secret replaces the stored hash and reactivates the key (rotation by whoever holds
    the environment); an unchanged secret leaves the row alone, so a revoked bootstrap key stays revoked.
    """
    secret = getattr(ctx.settings, "bootstrap_admin_key", None)
    if not secret:
        return None
    secret = secret.strip()
    check_settings(ctx.settings)
    owner = check_owner(getattr(ctx.settings, "bootstrap_admin_owner", None) or "admin")
    with ctx.Session.begin() as s:
        row = s.get(ApiKey, BOOTSTRAP_ID)
        if row is None:
            salt, digest = _hash_new(secret)
            row = ApiKey(id=BOOTSTRAP_ID, owner=owner, scopes=",".join(SCOPES), key_hash=digest, salt=salt,
                         hash_scheme=SCHEME)
            s.add(row)
            log.warning("bootstrap admin key installed for owner %s (key id %s)", owner, BOOTSTRAP_ID)
        elif not _matches(row, secret):
            row.salt, row.key_hash = _hash_new(secret)
            row.hash_scheme, row.revoked_at, row.owner, row.scopes = SCHEME, None, owner, ",".join(SCOPES)
            log.warning("bootstrap admin key %s replaced by a new TRANSFERRANK_BOOTSTRAP_ADMIN_KEY", BOOTSTRAP_ID)
        elif row.revoked_at is not None:
            log.warning("the bootstrap admin key was revoked; TRANSFERRANK_BOOTSTRAP_ADMIN_KEY is ignored until "
                        "it changes")
    _forget(ctx)
    return key_dict(row)


# ---------------------------------------------------------------------- authentication
def _token(header: str) -> str:
    parts = header.split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer" or not parts[1].strip():
        raise Unauthorized("send the API key as 'Authorization: Bearer <key>'")
    token = parts[1].strip()
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthorized("invalid or revoked API key")
    return token


def _verify(ctx: Context, token: str) -> Principal:
    tag = "tok:" + hashlib.sha256(token.encode()).hexdigest()
    cached = ctx.auth_cache.get(tag)
    if cached is not None and time.monotonic() - cached[1] < _CACHE_SECONDS:
        hit: Principal = cached[0]
        return hit
    m = _KEY_RE.fullmatch(token)
    with ctx.Session.begin() as s:
        row = s.get(ApiKey, m.group(1)) if m else None
        if row is None:  # the bootstrap secret is free-form
            row = s.get(ApiKey, BOOTSTRAP_ID)
        if row is None or not _matches(row, token) or row.revoked_at is not None:
            raise Unauthorized("invalid or revoked API key")
        if row.salt is None or row.hash_scheme != SCHEME:  # upgrade an old hash now that the key is known
            row.salt, row.key_hash = _hash_new(token)
            row.hash_scheme = SCHEME
        now = utcnow()
        last = row.last_used_at
        if last is not None and last.tzinfo is None:
            last = last.replace(tzinfo=now.tzinfo)
        if last is None or (now - last).total_seconds() > 60:  # not a write per request
            row.last_used_at = now
        principal = Principal(row.owner, tuple(row.scopes.split(",")), row.id)
    if len(ctx.auth_cache) > _CACHE_MAX:
        ctx.auth_cache.clear()
    ctx.auth_cache[tag] = (principal, time.monotonic())
    return principal


def authenticate(ctx: Context, header: str | None, scope: str, *, key_required: bool = False) -> Principal:
    """The principal of a request needing ``scope``: 401 without a valid key where one is needed,
    403 when the key lacks the scope. ``key_required``: never the anonymous open-mode principal."""
    mode = effective_mode(ctx)
    if header:
        principal = _verify(ctx, _token(header))
    elif mode == "open" and not key_required:
        principal = LOCAL
    elif key_required and mode == "open":
        raise Unauthorized(f"key management needs an admin API key, also in open mode: {CREATE_HINT}")
    elif mode == "closed" or not any_key(ctx):
        raise Unauthorized(f"this service requires an API key and none exists yet: {CREATE_HINT}")
    else:
        raise Unauthorized("this service requires an API key: send 'Authorization: Bearer <key>' "
                           "(create one with `transferrank keys create`)")
    if not principal.has(scope):
        raise Forbidden(f"this key (id {principal.key_id}) lacks the '{scope}' scope; it has "
                        f"{', '.join(principal.scopes)}")
    return principal
