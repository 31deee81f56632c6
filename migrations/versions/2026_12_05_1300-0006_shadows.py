"""Shadow scoring: ``shadows``, one row per candidate version scoring the samples appended
to a model's log from ``since_offset`` on, beside the version it is compared with; the
learner adds to the sums and moves ``through`` (the last offset scored).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shadows",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("against_version", sa.Integer(), nullable=False),
        sa.Column("since_offset", sa.BigInteger(), nullable=False),
        sa.Column("through", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("loss_sum", sa.Float(), nullable=False),
        sa.Column("correct", sa.BigInteger(), nullable=False),
        sa.Column("against_loss_sum", sa.Float(), nullable=False),
        sa.Column("against_correct", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_shadows_model_id_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("model_id", "version", name=op.f("pk_shadows")),
    )


def downgrade() -> None:
    op.drop_table("shadows")
