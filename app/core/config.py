"""Service configuration, read from environment variables (no extra dependency).

| variable | default | meaning |
|---|---|---|
| ``TRANSFERRANK_DATA_DIR`` | ``./.transferrank`` | blobs, FAISS index, SQLite file |
| ``TRANSFERRANK_DATABASE_URL`` | ``sqlite:///<data dir>/transferrank.db`` | SQLAlchemy URL (PostgreSQL in production) |
| ``TRANSFERRANK_RAY_ADDRESS`` | unset (local thread pool) | ``host:port`` / ``auto`` -> Ray workers |
| ``TRANSFERRANK_WORKERS`` | 2 | local pool size / number of Ray actors |
| ``TRANSFERRANK_MAX_UPLOAD_BYTES`` | 52428800 (50 MB) | larger uploads -> 413 |
| ``TRANSFERRANK_MAX_ROWS`` | 100000 | more examples -> 422 |
| ``TRANSFERRANK_MAX_CLASSES`` | 1000 | more classes -> 422 |
| ``TRANSFERRANK_BASE_ENCODER`` | ``minilm-l6`` | encoder for task embeddings / ESMs |
| ``TRANSFERRANK_SEED_DEMO`` | 1 | seed the demo catalogue on first start |
| ``TRANSFERRANK_TRAIN_DEMO_ESMS`` | 1 | queue ESM training for demo sources shipped without one |
| ``TRANSFERRANK_WARM_UP`` | 1 with ``serve`` | load every model candidate in the background at start |
| ``TRANSFERRANK_JOB_STALE_SECONDS`` | 300 | a running job without heartbeat this long is failed |
| ``TRANSFERRANK_LOG_LEVEL`` | INFO | logging level |
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _env_int(env: dict, name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _env_bool(env: dict, name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def _default_base_encoder() -> str:
    try:
        from app.encoders.registry import BASE_ENCODER

        return BASE_ENCODER
    except ImportError:  # pragma: no cover - the registry is part of the package
        return "minilm-l6"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(".transferrank")
    database_url: str | None = None  # None -> SQLite file in data_dir
    ray_address: str | None = None
    workers: int | None = None
    max_upload_bytes: int = 50 * 1024 * 1024
    max_rows: int = 100_000
    max_classes: int = 1000
    base_encoder: str = field(default_factory=_default_base_encoder)
    seed_demo: bool = True
    train_demo_esms: bool = True
    job_stale_seconds: int = 300
    log_level: str = "INFO"
    warm_up: bool = False

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> "Settings":
        env = dict(os.environ if env is None else env)
        s = cls(
            data_dir=Path(env.get("TRANSFERRANK_DATA_DIR") or ".transferrank"),
            database_url=env.get("TRANSFERRANK_DATABASE_URL") or None,
            ray_address=env.get("TRANSFERRANK_RAY_ADDRESS") or None,
            workers=_env_int(env, "TRANSFERRANK_WORKERS", 0, minimum=0) or None,
            max_upload_bytes=_env_int(env, "TRANSFERRANK_MAX_UPLOAD_BYTES", cls.max_upload_bytes),
            max_rows=_env_int(env, "TRANSFERRANK_MAX_ROWS", cls.max_rows),
            max_classes=_env_int(env, "TRANSFERRANK_MAX_CLASSES", cls.max_classes, minimum=2),
            base_encoder=env.get("TRANSFERRANK_BASE_ENCODER") or _default_base_encoder(),
            seed_demo=_env_bool(env, "TRANSFERRANK_SEED_DEMO", True),
            train_demo_esms=_env_bool(env, "TRANSFERRANK_TRAIN_DEMO_ESMS", True),
            job_stale_seconds=_env_int(env, "TRANSFERRANK_JOB_STALE_SECONDS", cls.job_stale_seconds),
            log_level=(env.get("TRANSFERRANK_LOG_LEVEL") or "INFO").upper(),
            warm_up=_env_bool(env, "TRANSFERRANK_WARM_UP", False),
        )
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "data_dir" in overrides:
            overrides["data_dir"] = Path(overrides["data_dir"])
        return replace(s, **overrides)

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'transferrank.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def index_path(self) -> Path:
        return self.data_dir / "index" / f"tasks-{self.base_encoder}.faiss"


# ---------------------------------------------------------------------- hostile-input limits
# Bounds on what one request may cost (uploads, JSON bodies, jobs). Read from the environment
# with ``limits()``; kept apart from ``Settings`` so either can change without the other.
@dataclass(frozen=True)
class Limits:
    max_decompressed_bytes: int = 256 * 1024 * 1024  # TRANSFERRANK_MAX_DECOMPRESSED_BYTES
    max_columns: int = 256  # TRANSFERRANK_MAX_COLUMNS (table columns / NPZ arrays)
    max_cell_bytes: int = 64 * 1024  # TRANSFERRANK_MAX_CELL_BYTES (one text / label cell)
    max_dim: int = 16384  # TRANSFERRANK_MAX_DIM (NPZ feature columns)
    max_json_bytes: int = 1024 * 1024  # TRANSFERRANK_MAX_JSON_BYTES (non-upload request bodies)
    max_string_chars: int = 20_000  # TRANSFERRANK_MAX_STRING_CHARS (any string in a JSON body)
    sync_cost_limit: float = 2e8  # TRANSFERRANK_SYNC_COST_LIMIT (rankings above it run as jobs)
    max_queued_jobs: int = 64  # TRANSFERRANK_MAX_QUEUED_JOBS (unfinished jobs, all owners)
    max_queued_jobs_per_owner: int = 8  # TRANSFERRANK_MAX_QUEUED_JOBS_PER_OWNER
    reaper_seconds: int = 30  # TRANSFERRANK_REAPER_SECONDS (periodic stale-job reaper)
    shutdown_seconds: int = 10  # TRANSFERRANK_SHUTDOWN_SECONDS (wait for running jobs at stop)

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Limits":
        env = dict(os.environ if env is None else env)
        out = {}
        for f in cls.__dataclass_fields__.values():
            name = f"TRANSFERRANK_{f.name.upper()}"
            if f.type in ("float", float):
                raw = env.get(name)
                if raw is None or raw.strip() == "":
                    continue
                try:
                    value = float(raw)
                except ValueError:
                    raise ValueError(f"{name} must be a number, got {raw!r}") from None
                if not value > 0 or value == float("inf"):
                    raise ValueError(f"{name} must be a positive finite number, got {raw!r}")
                out[f.name] = value
            else:
                out[f.name] = _env_int(env, name, f.default)
        return cls(**out)


def limits(settings=None) -> Limits:
    """The limits in force: ``settings.limits`` when the settings carry them, else the environment."""
    own = getattr(settings, "limits", None)
    return own if isinstance(own, Limits) else Limits.from_env()
