"""tenancy: an owner on datasets, source tasks, rankings, feedback, jobs and encoders; API keys
hashed with a per-key salt

Existing rows move to the default owner ``local`` (the owner of open mode); the demo catalogue
(sources with origin ``demo``, their datasets and jobs) and every encoder become ``public``.
A dataset is unique per (owner, content) instead of per content, so two owners uploading the
same file each get their own row.

Stored key hashes were an unsalted sha256 of the key. Each one is wrapped here as
HMAC-SHA256(salt, old hash) with a fresh per-key salt (scheme ``hmac-sha256-legacy``), so no
unsalted hash stays in the database; the service re-hashes a key with the current scheme the
first time it is used.

Only columns and indexes are added or dropped (no table is rebuilt), so SQLite keeps every row
and foreign key. Downgrade drops the owner columns and restores the unique content index; it
refuses while two owners hold the same content (delete one of the duplicates first), and keys
hashed by this revision do not authenticate after it (create new ones with the CLI).

Revision ID: 0003
Revises: 0001
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_OWNER = "local"
PUBLIC_OWNER = "public"
OWNED = ("datasets", "source_tasks", "rankings", "feedback")


def _owner(name: str, default: str) -> sa.Column:
    return sa.Column(name, sa.String(length=255), nullable=False, server_default=default)


def upgrade() -> None:
    for table in OWNED:
        op.add_column(table, _owner("owner", DEFAULT_OWNER))
        op.create_index(f"ix_{table}_owner", table, ["owner"], unique=False)
    op.add_column("jobs", _owner("tenant", DEFAULT_OWNER))
    op.create_index("ix_jobs_tenant", "jobs", ["tenant"], unique=False)
    op.add_column("encoders", _owner("owner", PUBLIC_OWNER))
    op.create_index("ix_encoders_owner", "encoders", ["owner"], unique=False)

    op.drop_index("ix_datasets_sha256", table_name="datasets")
    op.create_index("ix_datasets_sha256", "datasets", ["sha256"], unique=False)
    op.create_index("uq_datasets_owner_sha256", "datasets", ["owner", "sha256"], unique=True)

    # the demo catalogue is public
    op.execute(sa.text("UPDATE source_tasks SET owner = :p WHERE origin = 'demo'").bindparams(p=PUBLIC_OWNER))
    op.execute(sa.text("UPDATE datasets SET owner = :p WHERE id IN "
                       "(SELECT dataset_id FROM source_tasks WHERE origin = 'demo')").bindparams(p=PUBLIC_OWNER))
    op.execute(sa.text("UPDATE jobs SET tenant = :p WHERE id IN (SELECT job_id FROM source_tasks "
                       "WHERE origin = 'demo' AND job_id IS NOT NULL)").bindparams(p=PUBLIC_OWNER))

    op.add_column("api_keys", sa.Column("salt", sa.String(length=64), nullable=True))
    op.add_column("api_keys", sa.Column("hash_scheme", sa.String(length=32), nullable=False,
                                        server_default="hmac-sha256"))
    conn = op.get_bind()
    keys = sa.table("api_keys", sa.column("id", sa.String), sa.column("key_hash", sa.String),
                    sa.column("salt", sa.String), sa.column("hash_scheme", sa.String))
    for key_id, old in conn.execute(sa.select(keys.c.id, keys.c.key_hash)).all():
        salt = secrets.token_hex(16)
        wrapped = hmac.new(bytes.fromhex(salt), old.encode(), hashlib.sha256).hexdigest()
        conn.execute(keys.update().where(keys.c.id == key_id)
                     .values(key_hash=wrapped, salt=salt, hash_scheme="hmac-sha256-legacy"))


def downgrade() -> None:
    conn = op.get_bind()
    dupes = conn.execute(sa.text("SELECT count(*) FROM (SELECT sha256 FROM datasets GROUP BY sha256 "
                                 "HAVING count(*) > 1) d")).scalar()
    if dupes:
        raise RuntimeError(f"cannot downgrade below 0003: {dupes} dataset content(s) are stored by more than one "
                           "owner; delete the duplicates first (nothing was changed)")
    op.drop_column("api_keys", "hash_scheme")
    op.drop_column("api_keys", "salt")
    op.drop_index("uq_datasets_owner_sha256", table_name="datasets")
    op.drop_index("ix_datasets_sha256", table_name="datasets")
    op.create_index("ix_datasets_sha256", "datasets", ["sha256"], unique=True)
    op.drop_index("ix_encoders_owner", table_name="encoders")
    op.drop_index("ix_jobs_tenant", table_name="jobs")
    for table in OWNED:
        op.drop_index(f"ix_{table}_owner", table_name=table)
    # SQLite: DROP COLUMN in place (3.35+), never a table rebuild that would cascade deletes
    for table in OWNED + ("encoders",):
        op.drop_column(table, "owner")
    op.drop_column("jobs", "tenant")
