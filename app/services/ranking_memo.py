"""Repeated rankings answered from memory: a ranking is addressed by its request + the state it read.

A ranking's answer depends on the request, the target's content, the cached scores of that
target, the catalogue (source tasks, their ESMs and status), the model registry, observed
feedback, the prior's thresholds (``app.services.prior``), the two-stage settings
(``app.services.two_stage``) and the code version. ``fingerprint``
digests all of these with a few aggregate SQL queries (counts and largest ids: any new score,
source, ESM, feedback or model changes it). ``create`` in ``app.services.rankings`` looks the
fingerprint up first: when a finished ranking with the same fingerprint exists in this process,
its stored answer is returned as is (no recomputation, no new row); otherwise the ranking is
computed and, when it finished inline, remembered under the fingerprint of the state it left
behind. ``etag`` turns a fingerprint into an HTTP entity tag (``If-None-Match`` -> 304). Per
process, bounded (LRU).
"""
from __future__ import annotations

import hashlib
import json
import threading
import weakref
from collections import OrderedDict
from typing import Any

from sqlalchemy import bindparam, case, func, select

from app.db.models import Dataset, EncoderRow, Feedback, Score, SourceTask
from app.services import scores as scores_svc

MAX_ENTRIES = 2048

_memos: weakref.WeakKeyDictionary[Any, _Memo] = weakref.WeakKeyDictionary()
_memos_lock = threading.Lock()


class _Memo:
    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        with self.lock:
            body = self.items.get(key)
            if body is not None:
                self.items.move_to_end(key)
            return body

    def put(self, key: str, body: dict[str, Any]) -> None:
        with self.lock:
            self.items[key] = body
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


def _memo(ctx: Any) -> _Memo:
    with _memos_lock:
        m = _memos.get(ctx)
        if m is None:
            m = _memos[ctx] = _Memo(MAX_ENTRIES)
        return m


def fingerprint(ctx: Any, request: dict[str, Any], target_id: str, scope: str | None = None) -> str | None:
    """Digest of ``request`` (the ranking spec as a dict) and of the state a ranking of
    ``target_id`` reads; ``scope`` separates callers that must not share answers (e.g. an API
    key's owner). None when the target does not exist."""
    with ctx.Session() as s:  # one statement (one round trip) of scalar subqueries: a cached POST's cost
        row = list(s.execute(_STATE, {"target_id": target_id}).one())
    sha = row[0]
    if sha is None:
        return None
    state = [request, target_id, sha, scope, row[1:3], row[3:7], row[7:9], row[9:11],
             scores_svc.version(), getattr(ctx.settings, "base_encoder", None), _prior_settings(),
             [getattr(ctx.settings, f"two_stage_{k}", None) for k in ("above", "shortlist", "calibration", "rank")]]
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


def _state_query() -> Any:
    """``SELECT`` of the target's sha256 (bound ``target_id``), then (count, max id) of its scores;
    the source tasks' count, max id, ESM count and ready count; feedback's count and max id; the
    models' count and enabled count. Built once: its SQL cache key is computed once too."""
    sha = select(Dataset.sha256).where(Dataset.id == bindparam("target_id")).scalar_subquery()
    scored = Score.target_sha256 == sha
    cols = [
        sha,
        select(func.count(Score.id)).where(scored).scalar_subquery(),
        select(func.max(Score.id)).where(scored).scalar_subquery(),
        select(func.count(SourceTask.id)).scalar_subquery(),
        select(func.max(SourceTask.id)).scalar_subquery(),
        select(func.count(SourceTask.esm_blob)).scalar_subquery(),
        select(func.sum(case((SourceTask.status == "ready", 1), else_=0))).scalar_subquery(),
        select(func.count(Feedback.id)).scalar_subquery(),
        select(func.max(Feedback.id)).scalar_subquery(),
        select(func.count(EncoderRow.name)).scalar_subquery(),
        select(func.sum(case((EncoderRow.enabled.is_(True), 1), else_=0))).scalar_subquery(),
    ]
    return select(*cols)


_STATE = _state_query()


def _prior_settings() -> list[Any]:
    """The feedback prior's thresholds (read at call time: a changed setting changes the answer)."""
    from app.services import prior

    return [prior.MIN_SIMILARITY, prior.MIN_PER_TARGET, prior.MIN_OBSERVED, prior.UNOBSERVED_POLICY]


def lookup(ctx: Any, key: str | None) -> dict[str, Any] | None:
    """The remembered answer for a fingerprint (a copy), or None."""
    if key is None:
        return None
    body = _memo(ctx).get(key)
    return None if body is None else dict(body)


def remember(ctx: Any, key: str | None, body: dict[str, Any]) -> None:
    """Keep a finished ranking's answer under ``key``."""
    if key is not None and body.get("status") == "done":
        _memo(ctx).put(key, dict(body))


def etag(key: str) -> str:
    """A strong HTTP entity tag for a fingerprint or any other stable identifier."""
    return '"' + hashlib.sha256(key.encode()).hexdigest()[:40] + '"'


def etag_for(body: dict[str, Any]) -> str | None:
    """The entity tag of a ranking answer: finished rankings never change, so their id names
    their content; None while queued or running."""
    if body.get("status") != "done" or not body.get("id"):
        return None
    return etag(f"ranking:{body['id']}")


def matches(if_none_match: str | None, tag: str) -> bool:
    """True when an ``If-None-Match`` header names ``tag`` (or is ``*``)."""
    if not if_none_match:
        return False
    wanted = {t.strip() for t in if_none_match.split(",")}
    return "*" in wanted or tag in wanted or f"W/{tag}" in wanted
