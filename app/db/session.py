"""Engine/session construction and programmatic Alembic migrations."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import CursorResult, Engine, Result
from sqlalchemy.orm import Session, sessionmaker

REPO_ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = REPO_ROOT / "migrations"
ALEMBIC_INI = REPO_ROOT / "alembic.ini"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str, engine: Engine | None = None):
    from alembic.config import Config

    cfg = Config(str(ALEMBIC_INI)) if ALEMBIC_INI.exists() else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if engine is not None:
        cfg.attributes["engine"] = engine
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(url: str, engine: Engine | None = None, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url, engine), revision)


def downgrade(url: str, engine: Engine | None = None, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url, engine), revision)


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE / DELETE touched (``Session.execute`` is typed as returning a plain ``Result``)."""
    return int(result.rowcount) if isinstance(result, CursorResult) else 0
