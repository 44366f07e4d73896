"""Who may see and change a row. An owner reads its own rows and the public catalogue
(``PUBLIC_OWNER``); it changes its own rows, and the public ones only with the admin scope.
Another owner's row is reported as missing (404), never as forbidden, so its existence does not
leak. ``owner=None`` is internal use (jobs, the CLI's own data dir): no filter.
"""
from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.sql.elements import ColumnElement

from app.core.errors import Forbidden, NotFound
from app.db.models import DEFAULT_OWNER, PUBLIC_OWNER

__all__ = ["DEFAULT_OWNER", "PUBLIC_OWNER", "can_read", "check_read", "check_write", "visible"]


T = TypeVar("T")


def visible(column: ColumnElement[str] | Any, owner: str | None) -> ColumnElement[bool]:
    """A WHERE clause keeping rows ``owner`` may read (True when ``owner`` is None)."""
    col: ColumnElement[str] = column
    if owner is None:
        return col.is_not(None)
    return col.in_((owner, PUBLIC_OWNER))


def can_read(row_owner: str | None, owner: str | None) -> bool:
    return owner is None or row_owner in (owner, PUBLIC_OWNER)


def check_read(row: T | None, owner: str | None, missing: str) -> T:
    """``row`` when ``owner`` may read it, else NotFound(``missing``) — the same answer as for no row."""
    if row is None or not can_read(getattr(row, "owner", None), owner):
        raise NotFound(missing)
    return row


def check_write(row: T | None, owner: str | None, admin: bool, missing: str, what: str) -> T:
    """``row`` when ``owner`` may change it: its own, or public with the admin scope."""
    found = check_read(row, owner, missing)
    row_owner = getattr(found, "owner", None)
    if owner is not None and row_owner == PUBLIC_OWNER and row_owner != owner and not admin:
        raise Forbidden(f"{what} belongs to the public catalogue, which only an admin key may change")
    return found
