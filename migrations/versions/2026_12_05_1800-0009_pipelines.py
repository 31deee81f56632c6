"""Pipelines: a job's ``parent_job`` (the pipeline it is step ``step`` of).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as b:
        b.add_column(sa.Column("parent_job", sa.String(36), nullable=True))
        b.add_column(sa.Column("step", sa.Integer(), nullable=True))
    op.create_index("ix_jobs_parent_job", "jobs", ["parent_job"])


def downgrade() -> None:
    op.drop_index("ix_jobs_parent_job", table_name="jobs")
    with op.batch_alter_table("jobs") as b:
        b.drop_column("step")
        b.drop_column("parent_job")
