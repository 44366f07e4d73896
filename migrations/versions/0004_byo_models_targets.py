"""bring your own candidates: model rows (modality, origin, status, options, meta, error, job,
created_at) and dataset target types (task_type, modality)

Revision ID: 0004
Revises: 0003
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as b:
        b.add_column(sa.Column("task_type", sa.String(length=16), nullable=False, server_default="classification"))
        b.add_column(sa.Column("modality", sa.String(length=16), nullable=False, server_default="text"))
    op.execute("UPDATE datasets SET modality = 'features' WHERE kind = 'features'")
    with op.batch_alter_table("encoders", schema=None) as b:
        b.add_column(sa.Column("modality", sa.String(length=16), nullable=False, server_default="text"))
        b.add_column(sa.Column("origin", sa.String(length=16), nullable=False, server_default="builtin"))
        b.add_column(sa.Column("status", sa.String(length=16), nullable=False, server_default="ready"))
        b.add_column(sa.Column("options", sa.JSON(), nullable=True))
        b.add_column(sa.Column("meta", sa.JSON(), nullable=True))
        b.add_column(sa.Column("error", sa.Text(), nullable=True))
        b.add_column(sa.Column("job_id", sa.String(length=32), nullable=True))
        b.add_column(sa.Column("created_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # only the new columns go; every dataset, model and score row stays. SQLite: DROP COLUMN in place
    # (3.35+), never a batch table rebuild, which fails (or cascades) on the rows referencing datasets
    for col in ("created_at", "job_id", "error", "meta", "options", "status", "origin", "modality"):
        op.drop_column("encoders", col)
    op.drop_column("datasets", "modality")
    op.drop_column("datasets", "task_type")
