"""Request limits and fault mapping for every route.

``install(app, settings)`` adds:

- ``RequestLimits``, a pure ASGI middleware that, before a route runs,
  refuses (422) control characters (NUL, ...) in the path and the query string, and integer
  query values outside the 64-bit range; caps request bodies (413): uploads
  (``multipart/form-data``) at ``TRANSFERRANK_MAX_UPLOAD_BYTES`` plus framing, every other body
  at ``TRANSFERRANK_MAX_JSON_BYTES``, from ``Content-Length`` and again while the body streams;
  and, for JSON bodies, refuses (422) control characters other than tab / newline / carriage
  return in any string, strings longer than ``TRANSFERRANK_MAX_STRING_CHARS``, non-finite
  numbers (``NaN``, ``Infinity``) and integers outside the 64-bit range.
- exception handlers that turn faults into statuses a person can act on instead of a 500:
  ``MemoryError`` -> 413, numeric ``OverflowError`` / ``FloatingPointError`` -> 422, a full
  disk (``OSError`` ENOSPC / EDQUOT) -> 507, and database integrity / data errors -> 409 / 422
  without the driver's text.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
from urllib.parse import parse_qsl, unquote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.core.config import limits as current_limits
from app.core.logging import get_logger
from app.services.jobs import requester

log = get_logger("limits")

UPLOAD_OVERHEAD = 64 * 1024  # multipart framing around the file
INT64_MAX = 2**63 - 1
#: refused in any request string: C0 controls but tab / LF / CR, and DEL
BAD_CHARS = frozenset(chr(c) for c in range(32) if c not in (9, 10, 13)) | {"\x7f"}
#: refused in paths and query strings: every C0 control and DEL
BAD_URL_CHARS = frozenset(chr(c) for c in range(32)) | {"\x7f"}


class BodyTooLarge(Exception):
    def __init__(self, limit: int, what: str):
        super().__init__(what)
        self.limit, self.what = limit, what


def _bad_char(s: str, bad=BAD_CHARS) -> str | None:
    for ch in s:
        if ch in bad:
            return ch
    return None


def _describe(ch: str) -> str:
    return "a NUL character" if ch == "\x00" else f"the control character U+{ord(ch):04X}"


def check_json_value(value, where: str = "body", *, max_chars: int = 20_000, depth: int = 0) -> str | None:
    """First problem in a parsed JSON value (a message), or None."""
    if depth > 32:
        return f"{where}: nested more than 32 levels deep"
    if isinstance(value, str):
        if len(value) > max_chars:
            return f"{where}: a string of {len(value)} characters, over the limit of {max_chars} " \
                   "(TRANSFERRANK_MAX_STRING_CHARS)"
        ch = _bad_char(value)
        if ch is not None:
            return f"{where}: contains {_describe(ch)}; remove it"
        return None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if not -INT64_MAX - 1 <= value <= INT64_MAX:
            return f"{where}: the integer {str(value)[:30]} is out of range (at most {INT64_MAX})"
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"{where}: {value} is not a finite number; send a number such as 128"
        return None
    if isinstance(value, list):
        for i, v in enumerate(value):
            msg = check_json_value(v, f"{where}[{i}]", max_chars=max_chars, depth=depth + 1)
            if msg:
                return msg
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            msg = check_json_value(k, f"{where} key", max_chars=min(max_chars, 255), depth=depth + 1) \
                or check_json_value(v, f"{where}.{k[:40]}", max_chars=max_chars, depth=depth + 1)
            if msg:
                return msg
    return None


def check_query(query: str) -> str | None:
    for key, value in parse_qsl(query, keep_blank_values=True):
        for part in (key, value):
            ch = _bad_char(part, BAD_URL_CHARS)
            if ch is not None:
                return f"query parameter {key[:40]!r} contains {_describe(ch)}; remove it"
        v = value.strip()
        if len(v) > 2000:
            return f"query parameter {key[:40]!r} is {len(v)} characters long, over the limit of 2000"
        digits = v[1:] if v[:1] in "+-" else v
        if digits.isdigit() and (len(digits) > 19 or int(digits) > INT64_MAX):
            return f"query parameter {key[:40]!r}: {v[:30]} is out of range (at most {INT64_MAX})"
    return None


def _requester(scope, headers: dict) -> str:
    """Who is asking, for the per-owner job bound: the API key (hashed), else the client address."""
    auth = headers.get(b"authorization")
    if auth:
        return "key:" + hashlib.sha256(auth).hexdigest()[:16]
    client = scope.get("client") or ("?", 0)
    return f"addr:{client[0]}"


async def _send_json(send, status: int, detail: str, headers: dict | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """Pure ASGI middleware (see the module docstring)."""

    def __init__(self, app, settings=None):
        self.app = app
        self.settings = settings
        self.limits = current_limits(settings)

    def _upload_limit(self) -> int:
        return int(getattr(self.settings, "max_upload_bytes", 50 << 20)) + UPLOAD_OVERHEAD

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        raw_path = scope.get("raw_path") or path.encode("utf-8", "surrogateescape")
        try:
            decoded = unquote(raw_path.decode("latin-1"))
        except Exception:  # pragma: no cover - latin-1 decodes every byte
            decoded = path
        for p in (path, decoded):
            ch = _bad_char(p, BAD_URL_CHARS)
            if ch == "\x00":
                return await _send_json(send, 422, "the URL contains a NUL character")
            if ch is not None:
                return await _send_json(send, 422, f"the URL contains {_describe(ch)}; ids and names never "
                                                   "contain control characters")
        qs = scope.get("query_string", b"").decode("latin-1")
        if qs:
            msg = check_query(qs)
            if msg:
                return await _send_json(send, 422, msg)
        method = scope.get("method", "GET")
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        requester.set(_requester(scope, headers))
        ctype = headers.get(b"content-type", b"").decode("latin-1").lower()
        multipart = ctype.startswith("multipart/")
        limit = self._upload_limit() if multipart else self.limits.max_json_bytes
        what = "TRANSFERRANK_MAX_UPLOAD_BYTES" if multipart else "TRANSFERRANK_MAX_JSON_BYTES"
        shown = limit - UPLOAD_OVERHEAD if multipart else limit
        length = headers.get(b"content-length")
        if length is not None:
            text = length.decode("latin-1").strip()
            if not text.isdigit():
                return await _send_json(send, 400, "the Content-Length header is not a number")
            if int(text) > limit:
                return await _send_json(send, 413, f"the request body has {int(text)} bytes, over the limit of "
                                                   f"{shown} ({what})")
        if method in ("GET", "HEAD", "OPTIONS", "DELETE") and length is None \
                and b"transfer-encoding" not in headers:
            return await self.app(scope, receive, send)

        if not multipart:  # buffer the (small) body, check its JSON strings, replay it
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return await _send_json(send, 413, f"the request body is larger than the limit of {limit} "
                                                       f"bytes ({what})")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            if body and "json" in ctype:
                try:
                    parsed = json.loads(body)
                except (ValueError, RecursionError):
                    parsed = None  # malformed JSON: the route's validation reports it
                else:
                    msg = check_json_value(parsed, max_chars=self.limits.max_string_chars)
                    if msg:
                        return await _send_json(send, 422, msg)
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            return await self.app(scope, replay, send)

        total = 0
        started = False

        async def counted():
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > limit:
                    raise BodyTooLarge(shown, what)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await _send_json(send, 413, f"the upload is larger than the limit of {exc.limit} bytes ({exc.what})")


def _disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


DISK_FULL = ("the server's disk is full, so nothing could be written; free space (DELETE datasets or sources "
             "you no longer need, or ask the operator) and repeat the request")


def install(app: FastAPI, settings=None) -> None:
    """Add ``RequestLimits`` and the fault handlers to ``app``."""
    app.add_middleware(RequestLimits, settings=settings)

    @app.exception_handler(MemoryError)
    async def _memory(_req: Request, exc: MemoryError):
        log.warning("request ran out of memory: %s", exc)
        return JSONResponse({"detail": "the request needs more memory than the server can give; use fewer "
                                       "examples, fewer candidates or smaller estimator parameters"},
                            status_code=413)

    @app.exception_handler(OverflowError)
    async def _overflow(_req: Request, exc: OverflowError):
        return JSONResponse({"detail": f"a number is too large to compute with ({str(exc)[:160]}); use smaller "
                                       "values"}, status_code=422)

    @app.exception_handler(FloatingPointError)
    async def _fpe(_req: Request, exc: FloatingPointError):
        return JSONResponse({"detail": f"the computation overflowed ({str(exc)[:160]}); rescale the features "
                                       "or use smaller parameters"}, status_code=422)

    @app.exception_handler(OSError)
    async def _oserror(_req: Request, exc: OSError):
        if _disk_full(exc):
            log.error("disk full: %s", exc)
            return JSONResponse({"detail": DISK_FULL}, status_code=507)
        if isinstance(exc, FileNotFoundError) and "blob" in str(exc):
            # a deletion racing this request removed its data; a real loss shows in `transferrank doctor`
            log.warning("blob missing while answering a request: %s", exc)
            return JSONResponse({"detail": "an item this request needs was deleted by a concurrent request; "
                                           "reload it (GET) and repeat the request"}, status_code=409)
        log.exception("I/O error", exc_info=exc)
        return JSONResponse({"detail": f"the server could not read or write its data ({type(exc).__name__}); "
                                       "the operator can check it with `transferrank doctor`"}, status_code=500)

    try:
        from sqlalchemy.exc import DataError, IntegrityError, OperationalError
    except ImportError:  # pragma: no cover - sqlalchemy is a service dependency
        return

    @app.exception_handler(IntegrityError)
    async def _integrity(_req: Request, exc: IntegrityError):
        log.warning("integrity error answered 409: %s", str(exc).splitlines()[0][:300])
        return JSONResponse({"detail": "the request conflicts with a concurrent change (the item was created, "
                                       "changed or deleted meanwhile); reload and repeat it"}, status_code=409)

    @app.exception_handler(DataError)
    async def _data(_req: Request, exc: DataError):
        log.warning("data error answered 422: %s", str(exc).splitlines()[0][:300])
        return JSONResponse({"detail": "a value in the request cannot be stored (out of range, too long or "
                                       "containing invalid characters); check the request's fields"},
                            status_code=422)

    @app.exception_handler(OperationalError)
    async def _operational(_req: Request, exc: OperationalError):
        if "disk" in str(exc).lower() and "full" in str(exc).lower():
            return JSONResponse({"detail": DISK_FULL}, status_code=507)
        log.error("database unavailable: %s", str(exc).splitlines()[0][:300])
        return JSONResponse({"detail": "the database is unavailable or busy; retry in a moment"},
                            status_code=503, headers={"Retry-After": "5"})
