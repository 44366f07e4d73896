"""In-process ranking with the library and service code (no server): what
``TransferSelector(server=None)`` uses. The same path as ``transferrank rank``
(``app.services.oneshot.rank_bytes``) on a data dir (``$TRANSFERRANK_DATA_DIR`` or the
per-user default), whose score cache survives the process. Needs the ``service`` extras.
"""
from __future__ import annotations

import atexit
import os
import threading
from typing import Any

from transferrank._protocol import dict_candidates, encode_dataset
from transferrank.errors import error_for
from transferrank.models import Ranking

_LOCK = threading.Lock()
_CONTEXTS: dict[str, Any] = {}  # data dir -> app.services.context.Context


def _close_all() -> None:
    with _LOCK:
        for ctx in _CONTEXTS.values():
            ctx.close()
        _CONTEXTS.clear()


atexit.register(_close_all)


def context(data_dir: str | os.PathLike | None = None):
    """The (cached) service context of a data dir; opened once per process."""
    from app.core.config import Settings
    from app.services.startup import open_context

    settings = Settings.from_env(data_dir=data_dir)
    if "log_level" not in settings.model_fields_set:  # a library stays quiet unless told otherwise
        settings = settings.replace(log_level="WARNING")
    key = f"{settings.data_dir.resolve()}|{settings.db_url}"
    with _LOCK:
        ctx = _CONTEXTS.get(key)
        if ctx is None:
            ctx = _CONTEXTS[key] = open_context(settings)
        return ctx


def rank(data, *, candidates: str = "models", estimators=None, top_k: int = 10, sources=None,
         data_dir=None, name: str | None = None, progress=None) -> Ranking:
    """Rank ``data`` (anything ``Client.upload`` takes) in this process; service errors are
    raised as the client's typed exceptions (a 422 is a ``ValidationError``, a ``ValueError``)."""
    from app.core.errors import ServiceError
    from app.services.oneshot import rank_bytes

    filename, content = encode_dataset(data, name)
    sources = sources or dict_candidates(data)
    try:
        _ds, _created, out = rank_bytes(context(data_dir), content, filename, candidates=candidates,
                                        estimators=list(estimators) if estimators else None, top_k=top_k,
                                        sources=list(sources) if sources else None, name=name, progress=progress)
    except ServiceError as exc:
        raise error_for(exc.status_code, exc.detail) from None
    return Ranking.from_json(out)
