"""Production feedback. Recorded predictions and delayed labels: ``prediction_batches`` (one row per recorded
/predict request, inputs and served outputs packed), ``predictions`` (id → batch and
position, label and sample offset once labelled) and ``served_metrics`` (per version:
predictions recorded, labelled, loss and correct sums). Drift: ``learners.drift``, the
drift block the learner publishes with its progress.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("learners") as b:
        b.add_column(sa.Column("drift", sa.JSON(), nullable=True))
    op.create_table(
        "prediction_batches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("x", sa.LargeBinary(), nullable=False),
        sa.Column("outputs", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_prediction_batches_model_id_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prediction_batches")),
    )
    op.create_index(op.f("ix_prediction_batches_model_id"), "prediction_batches", ["model_id"])
    op.create_index(op.f("ix_prediction_batches_created_at"), "prediction_batches", ["created_at"])
    op.create_table(
        "predictions",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("pid", sa.String(length=128), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("label", sa.JSON(), nullable=True),
        sa.Column("offset", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_predictions_model_id_models"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["prediction_batches.id"],
            name=op.f("fk_predictions_batch_id_prediction_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_id", "pid", name=op.f("pk_predictions")),
    )
    op.create_index(op.f("ix_predictions_batch_id"), "predictions", ["batch_id"])
    op.create_table(
        "served_metrics",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("predictions", sa.BigInteger(), nullable=False),
        sa.Column("labelled", sa.BigInteger(), nullable=False),
        sa.Column("loss_sum", sa.Float(), nullable=False),
        sa.Column("correct", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_served_metrics_model_id_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("model_id", "version", name=op.f("pk_served_metrics")),
    )


def downgrade() -> None:
    op.drop_table("served_metrics")
    op.drop_index(op.f("ix_predictions_batch_id"), table_name="predictions")
    op.drop_table("predictions")
    op.drop_index(op.f("ix_prediction_batches_created_at"), table_name="prediction_batches")
    op.drop_index(op.f("ix_prediction_batches_model_id"), table_name="prediction_batches")
    op.drop_table("prediction_batches")
    with op.batch_alter_table("learners") as b:
        b.drop_column("drift")
