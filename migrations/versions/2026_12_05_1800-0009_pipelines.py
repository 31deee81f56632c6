"""Pipelines and policies: a job's ``parent_job`` (the pipeline it is step ``step`` of),
and ``policies`` (a model's maintenance policy and its scheduler's marks).

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
    op.create_table(
        "policies",
        sa.Column("model_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("triggers", sa.JSON(), nullable=False),
        sa.Column("pipeline", sa.JSON(), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("rev", sa.BigInteger(), nullable=False),
        sa.Column("samples_mark", sa.BigInteger(), nullable=False),
        sa.Column("seconds_mark", sa.DateTime(timezone=True), nullable=False),
        sa.Column("drift_mark", sa.BigInteger(), nullable=False),
        sa.Column("last_triggered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_trigger", sa.String(16), nullable=True),
        sa.Column("last_job", sa.String(36), nullable=True),
        sa.Column("last_skipped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("counted_job", sa.String(36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_policies_model_id_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_policies")),
    )


def downgrade() -> None:
    op.drop_table("policies")
    op.drop_index("ix_jobs_parent_job", table_name="jobs")
    with op.batch_alter_table("jobs") as b:
        b.drop_column("step")
        b.drop_column("parent_job")
