"""Alembic migrations: upgrade head -> downgrade base -> upgrade head, on SQLite and PostgreSQL;
the migrated schema matches the SQLAlchemy models."""
from __future__ import annotations

from sqlalchemy import inspect

from app.db.models import Base
from app.db.session import downgrade, make_engine, upgrade

TABLES = {"datasets", "encoders", "feature_sets", "source_tasks", "scores", "jobs", "rankings", "feedback",
          "api_keys"}


def _tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_upgrade(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(db_url)
    try:
        upgrade(db_url, engine)
        assert _tables(engine) == TABLES
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
        uniques = {tuple(u["column_names"]) for u in inspect(engine).get_unique_constraints("scores")}
        assert ("source", "target_sha256", "encoder", "estimator", "params_hash", "version") in uniques
        downgrade(db_url, engine)
        assert _tables(engine) == set()
        upgrade(db_url, engine)
        assert _tables(engine) == TABLES
        upgrade(db_url, engine)  # idempotent at head
    finally:
        engine.dispose()


def test_migrations_run_by_hand_with_alembic_cli(tmp_path, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {"TRANSFERRANK_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    alembic = Path(sys.executable).with_name("alembic")
    out = subprocess.run([str(alembic), "upgrade", "head"], cwd=repo, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    engine = make_engine(f"sqlite:///{tmp_path / 'transferrank.db'}")
    try:
        assert _tables(engine) == TABLES
    finally:
        engine.dispose()
