"""Service configuration: every ``TRANSFERRANK_*`` environment variable is a field of ``Settings``.

``Settings.from_env()`` reads the process environment (``Settings.from_env(mapping)`` reads a
given mapping instead, for tests); keyword overrides win over both. The README's configuration
table is generated from the fields here (``python -m app.core.config``) and a test keeps the two
in step.
"""
from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from app.core.paths import user_cache_dir

ENV_PREFIX = "TRANSFERRANK_"
DEFAULT_BASE_ENCODER = "minilm-l6"  # app.encoders.registry.BASE_ENCODER; a test checks they agree

_explicit_env: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("_explicit_env",
                                                                                          default=None)


class _MappingEnvSource(EnvSettingsSource):
    """Environment source that reads a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], mapping: Mapping[str, str]) -> None:
        self._mapping = dict(mapping)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._mapping, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


class Settings(BaseSettings):
    """Configuration of the service, the CLI, the workers and the benchmarks."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True,
                                      extra="ignore", validate_default=True)

    # -- storage
    data_dir: Path = Field(default_factory=user_cache_dir, description="blobs (content-addressed), FAISS index, "
                           "SQLite file, encoder caches",
                           json_schema_extra={"shown": "per-user cache dir (`~/.cache/transferrank` on Linux)"})
    database_url: str | None = Field(None, description="SQLAlchemy URL, e.g. "
                                     "`postgresql+psycopg://user:pw@host/db`",
                                     json_schema_extra={"shown": "SQLite in the data dir"})
    # -- workers
    ray_address: str | None = Field(None, description="`host:port`, `ray://host:port`, `auto`, `local` "
                                    "(Ray workers)", json_schema_extra={"shown": "unset (local threads)"})
    workers: int | None = Field(None, ge=1, description="local pool size / number of Ray actors",
                                json_schema_extra={"shown": "2 (Ray: one per GPU, else per CPU up to 8)"})
    worker_processes: int | None = Field(None, ge=0, description="local backend: worker processes for the "
                                         "CPU-heavy numerics of jobs (scoring, estimators), off the API "
                                         "process; 0: threads of the API process",
                                         json_schema_extra={"shown": "the local pool size"})
    worker_nice: int = Field(10, ge=0, le=19, description="local backend: how much the worker processes lower "
                             "their CPU priority (`nice`), so request handling wins the cores")
    worker_idle: bool = Field(True, description="local backend, Linux: the worker processes run under the "
                              "`SCHED_IDLE` policy (a core only when no request handler wants it; a waking "
                              "handler preempts them at once), which `nice` alone does not guarantee")
    api_workers: int = Field(1, ge=1, le=64, description="`serve`: uvicorn worker processes answering "
                             "requests (each with its own job runner and worker processes)")
    api_torch_threads: int | None = Field(None, ge=1, le=256, description="`serve` with local workers: torch "
                                          "threads of an API process (feature extraction runs there), so a "
                                          "core stays free for answering requests while a job extracts",
                                          json_schema_extra={"shown": "CPU count - 1, at least 1"})
    encoder_cache: int = Field(4, ge=1, description="how many encoders a worker keeps loaded (LRU)")
    device: str = Field("auto", description="`auto`, `cpu`, `cuda` or `cuda:N` for transformers encoders")
    faiss_threads: int = Field(1, ge=1, description="FAISS OpenMP threads")
    # -- limits
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1, description="larger uploads -> 413",
                                  json_schema_extra={"shown": "52428800 (50 MB)"})
    max_rows: int = Field(100_000, ge=1, description="more examples in a dataset -> 422")
    max_classes: int = Field(1000, ge=2, description="more classes in a dataset -> 422")
    max_image_pixels: int = Field(25_000_000, ge=1, description="pixels per image of an image dataset; more -> "
                                  "422 (decompression bombs are refused)")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="bytes per encoded image; more -> 422",
                                 json_schema_extra={"shown": "20971520 (20 MB)"})
    # -- catalogue and start-up
    base_encoder: str = Field(DEFAULT_BASE_ENCODER, min_length=1,
                              description="encoder for task embeddings and ESMs")
    seed_demo: bool = Field(True, description="seed the demo catalogue on first start")
    train_demo_esms: bool = Field(True, description="queue ESM training for demo sources shipped without one")
    warm_up: bool = Field(False, description="load the model candidates in the background at start",
                          json_schema_extra={"shown": "1 with `serve`, else 0"})
    job_stale_seconds: int = Field(300, ge=1, description="a running job without heartbeat this long is "
                                   "marked failed")
    log_level: str = Field("INFO", description="logging level")
    # -- authentication (app.services.keys)
    auth: Literal["auto", "keys", "open"] = Field(
        "auto", description="`auto`: keys required once one exists, open before only on loopback; `keys`: "
                            "always; `open`: no key needed (loopback only)")
    host: str | None = Field(None, description="the address the service binds (set by `serve --host`); decides "
                             "whether open mode is allowed", json_schema_extra={"shown": "`serve --host`"})
    bootstrap_admin_key: str | None = Field(None, repr=False, description="a secret (>= 32 characters) "
                                            "installed at start as the admin key `bootstrap`")
    bootstrap_admin_owner: str = Field("admin", description="the owner of the bootstrap admin key")
    # -- hostile-input and job limits (app.api.limits, app.services.ingest, app.services.jobs)
    max_decompressed_bytes: int = Field(256 * 1024 * 1024, ge=1, description="most bytes an upload may "
                                        "expand to while read (Parquet pages, NPZ members) -> 413",
                                        json_schema_extra={"shown": "268435456 (256 MB)"})
    max_columns: int = Field(256, ge=2, description="most table columns / NPZ arrays in an upload -> 422")
    max_cell_bytes: int = Field(64 * 1024, ge=16, description="most bytes in one text or label cell -> 422")
    max_dim: int = Field(16384, ge=1, description="most feature columns of an NPZ array -> 422")
    max_json_bytes: int = Field(1024 * 1024, ge=1024, description="most bytes of a non-upload request "
                                "body -> 413", json_schema_extra={"shown": "1048576 (1 MB)"})
    max_string_chars: int = Field(20_000, ge=255, description="most characters of any string in a JSON "
                                  "body -> 422")
    sync_cost_limit: float = Field(2e8, gt=0, description="rankings estimated above this many operations "
                                   "run as jobs (202)")
    # -- big catalogues (app.services.two_stage)
    two_stage_above: int = Field(500, ge=0, description="default tasks rankings of more task candidates than this "
                                 "run in two stages: a cheap first stage over every source, the exact default on "
                                 "the best; 0 = never (a request's `two_stage` overrides)")
    two_stage_shortlist: int = Field(300, ge=1, description="two-stage rankings: sources scored with the exact "
                                     "default (the best by the first stage)")
    two_stage_calibration: int = Field(64, ge=0, description="two-stage rankings: other sources, drawn at random, "
                                       "also scored exactly to normalise the exact scores as over the catalogue")
    two_stage_rank: int = Field(64, ge=1, description="two-stage rankings: principal directions of the target "
                                "kept by the first stage's low-rank LogME")
    max_queued_jobs: int = Field(64, ge=1, description="most unfinished jobs in the database; more -> 429 "
                                 "with Retry-After")
    max_queued_jobs_per_owner: int = Field(8, ge=1, description="most unfinished jobs per API key (or "
                                           "client address) in one process -> 429")
    reaper_seconds: int = Field(30, ge=1, description="how often jobs without a heartbeat are failed "
                                "(also at start)")
    shutdown_seconds: int = Field(10, ge=0, description="how long a stopping server waits for running "
                                  "jobs (they are cancelled)")
    # -- benchmarks and the demo builder (not read by the service)
    corpora: Path = Field(Path("/work/cache/corpora"), description="root of the unpacked text corpora "
                          "packages (demo builder, benchmarks); the system install is tried next")
    text_cache: Path = Field(Path("/work/cache/textbench"), description="cache of the text-task benchmark")
    fmnist_dir: Path | None = Field(None, description="Fashion-MNIST files for the model-zoo benchmark",
                                    json_schema_extra={"shown": "system install or user cache"})

    @field_validator("database_url", "ray_address", "host", "bootstrap_admin_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("auth", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("log_level")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.strip().upper() or "INFO"

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        mapping = _explicit_env.get()
        if mapping is not None:
            return init_settings, _MappingEnvSource(settings_cls, mapping)
        return init_settings, env_settings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``env`` (default: the process environment); non-None ``overrides`` win.

        Raises ``ValueError`` naming the ``TRANSFERRANK_*`` variable when a value is invalid."""
        kwargs = {k: v for k, v in overrides.items() if v is not None}
        with _reading(env):
            try:
                return cls(**kwargs)
            except ValidationError as exc:
                raise ValueError(_readable(exc)) from None

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated (the environment is not read again)."""
        with _reading({}):
            try:
                return type(self)(**{**self.model_dump(exclude_unset=False), **changes})
            except ValidationError as exc:
                raise ValueError(_readable(exc)) from None

    # -- derived paths
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
LIMIT_FIELDS = ("max_decompressed_bytes", "max_columns", "max_cell_bytes", "max_dim", "max_json_bytes",
                "max_string_chars", "sync_cost_limit", "max_queued_jobs", "max_queued_jobs_per_owner",
                "reaper_seconds", "shutdown_seconds")


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class Limits:
    """The request-cost limits of ``Settings`` as one small object (defaults as in ``Settings``);
    readers and tests may build one directly: ``Limits(max_cell_bytes=100)``."""

    max_decompressed_bytes: int = _default("max_decompressed_bytes")
    max_columns: int = _default("max_columns")
    max_cell_bytes: int = _default("max_cell_bytes")
    max_dim: int = _default("max_dim")
    max_json_bytes: int = _default("max_json_bytes")
    max_string_chars: int = _default("max_string_chars")
    sync_cost_limit: float = _default("sync_cost_limit")
    max_queued_jobs: int = _default("max_queued_jobs")
    max_queued_jobs_per_owner: int = _default("max_queued_jobs_per_owner")
    reaper_seconds: int = _default("reaper_seconds")
    shutdown_seconds: int = _default("shutdown_seconds")


def limits(settings: Settings | None = None) -> Limits:
    """The limits in force: those of ``settings`` (default: ``Settings.from_env()``)."""
    settings = settings if settings is not None else Settings.from_env()
    return Limits(**{name: getattr(settings, name, Settings.model_fields[name].default) for name in LIMIT_FIELDS})


@contextmanager
def _reading(env: Mapping[str, str] | None) -> Iterator[None]:
    token = _explicit_env.set(env)
    try:
        yield
    finally:
        _explicit_env.reset(token)


def _readable(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err.get("loc") else "?"
        parts.append(f"{env_name(field)}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


def env_name(field: str) -> str:
    """The environment variable of a ``Settings`` field."""
    return ENV_PREFIX + field.upper()


def settings_table() -> str:
    """The README's configuration table (markdown), one row per ``Settings`` field."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, f in Settings.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        shown = extra.get("shown")
        if shown is None:
            default = f.default
            shown = "unset" if default is None else f"`{default}`" if isinstance(default, (str, Path)) else (
                str(int(default)) if isinstance(default, bool) else str(default))
        rows.append(f"| `{env_name(name)}` | {shown} | {f.description} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover - prints the README table
    print(settings_table())
