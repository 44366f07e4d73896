"""The default data dir: the per-user cache directory (``platformdirs.user_cache_dir``:
``~/.cache/transferrank`` on Linux, honouring ``$XDG_CACHE_HOME``), so commands run from any
directory share one score cache and never create a data dir where they happen to run. The
``data_dir`` setting (``TRANSFERRANK_DATA_DIR``, ``--data-dir``) overrides it."""
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
