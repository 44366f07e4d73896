"""Engine/session construction and programmatic Alembic migrations."""
from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Select, create_engine, event
from sqlalchemy.engine import CursorResult, Engine, Result
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

T = TypeVar("T")
#: Values bound in one ``IN (...)``: SQLite refuses a statement with more than
#: SQLITE_MAX_VARIABLE_NUMBER parameters (32,766 in SQLite's own builds, 250,000 in Debian's).
IN_BATCH = 10_000

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


def scalars_in(session: Session, query: Select[T], column: InstrumentedAttribute[Any],
               values: Collection[Any]) -> list[T]:
    """``query.where(column IN values)``'s rows, bound in batches of ``IN_BATCH`` values, so a
    catalogue of any size stays under the database's parameter limit. Over several batches the
    rows come batch after batch: a caller that needs an order sorts them. No values: no query,
    no rows."""
    items = list(values)
    return [row for i in range(0, len(items), IN_BATCH)
            for row in session.scalars(query.where(column.in_(items[i:i + IN_BATCH])))]
