"""Metrics history: ``metric_points``, one row per point of a model's learning curve — the
learner's prequential sums and the model's served totals at its ``applied_through``
(``GET /models/{name}/metrics/history``). Existing models start with no points.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "metric_points",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("loss_sum", sa.Float(), nullable=False),
        sa.Column("correct", sa.BigInteger(), nullable=True),
        sa.Column("served_labelled", sa.BigInteger(), nullable=False),
        sa.Column("served_loss_sum", sa.Float(), nullable=False),
        sa.Column("served_correct", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_metric_points_model_id_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("model_id", "offset", name=op.f("pk_metric_points")),
    )


def downgrade() -> None:
    op.drop_table("metric_points")
