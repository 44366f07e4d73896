"""Where a data dir lives when none is given: ``$TRANSFERRANK_DATA_DIR``, else the per-user
cache directory (``platformdirs.user_cache_dir("transferrank")``: ``~/.cache/transferrank`` on
Linux, honouring ``$XDG_CACHE_HOME``), so commands run from any directory share one score cache
and never create ``./.transferrank`` where they happen to run."""
from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    try:
        from platformdirs import user_cache_dir as _ucd

        return Path(_ucd("transferrank", appauthor=False))
    except ImportError:  # XDG by hand
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "transferrank"


def default_data_dir(env: dict | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env["TRANSFERRANK_DATA_DIR"]) if env.get("TRANSFERRANK_DATA_DIR") else user_cache_dir()
