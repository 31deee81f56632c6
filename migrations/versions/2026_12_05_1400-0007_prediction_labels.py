"""Recorded predictions without a row per prediction. Ids Steward makes name their batch,
position and the batch's random ``token`` (``prediction_batches.token``), so only
client-named ids keep a ``predictions`` row; labels move out of ``predictions`` into
``prediction_labels``, one row per labelled batch (packed labels and the offsets of the
samples they became), so labelling never rewrites a batch's inputs.

The upgrade moves every label already given into ``prediction_labels``; the downgrade
moves them back and gives the predictions of made ids their rows (their ids, as made).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 14:00:00
"""

import json
from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _packing(task: str, output_dim: int) -> tuple[type, tuple[int, ...]]:
    """The sample log's packing of a label (app.online.samples.SampleSpec)."""
    return (np.int64 if task == "multiclass" else np.float32), ((output_dim,) if task == "regression" else ())


def _json(v: object) -> object:
    return json.loads(v) if isinstance(v, str) else v


def upgrade() -> None:
    with op.batch_alter_table("prediction_batches") as b:
        b.add_column(sa.Column("token", sa.BigInteger(), nullable=True))
    op.create_table(
        "prediction_labels",
        sa.Column("batch_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("y", sa.LargeBinary(), nullable=False),
        sa.Column("offsets", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["prediction_batches.id"],
            name=op.f("fk_prediction_labels_batch_id_prediction_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("batch_id", name=op.f("pk_prediction_labels")),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            'SELECT p.batch_id, p.position, p.label, p."offset", b.count, m.task, m.output_dim '
            "FROM predictions p JOIN prediction_batches b ON b.id = p.batch_id JOIN models m ON m.id = b.model_id "
            "WHERE p.label IS NOT NULL ORDER BY p.batch_id"
        )
    ).all()
    state: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for batch, pos, label, offset, count, task, output_dim in rows:
        if batch not in state:
            dtype, shape = _packing(task, output_dim)
            state[batch] = (np.zeros((count, *shape), dtype), np.full(count, -1, np.int64))
        y, offsets = state[batch]
        y[pos] = _json(label)
        offsets[pos] = offset
    if state:
        labels = sa.table(
            "prediction_labels",
            sa.column("batch_id"),
            sa.column("y", sa.LargeBinary),
            sa.column("offsets", sa.LargeBinary),
        )
        conn.execute(
            sa.insert(labels),
            [{"batch_id": b, "y": y.tobytes(), "offsets": o.tobytes()} for b, (y, o) in state.items()],
        )
    # ALTER TABLE … DROP COLUMN on both databases (SQLite ≥ 3.35): batch mode would copy the
    # table, and on SQLite dropping a parent table cascades to its children
    op.execute("ALTER TABLE predictions DROP COLUMN label")
    op.execute('ALTER TABLE predictions DROP COLUMN "offset"')


def downgrade() -> None:
    with op.batch_alter_table("predictions") as b:
        b.add_column(sa.Column("label", sa.JSON(), nullable=True))
        b.add_column(sa.Column("offset", sa.BigInteger(), nullable=True))
    conn = op.get_bind()
    preds = sa.table(
        "predictions",
        sa.column("model_id"),
        sa.column("pid"),
        sa.column("batch_id"),
        sa.column("position"),
        sa.column("label", sa.JSON),
        sa.column("offset"),
    )
    made = conn.execute(sa.text("SELECT id, model_id, count, token FROM prediction_batches WHERE token IS NOT NULL"))
    rows = [
        {"model_id": mid, "pid": f"p-{b}-{k}-{token:012x}", "batch_id": b, "position": k, "label": None, "offset": None}
        for b, mid, count, token in made
        for k in range(count)
    ]
    if rows:
        conn.execute(sa.insert(preds), rows)
    labelled = conn.execute(
        sa.text(
            "SELECT l.batch_id, l.y, l.offsets, b.count, m.task, m.output_dim FROM prediction_labels l "
            "JOIN prediction_batches b ON b.id = l.batch_id JOIN models m ON m.id = b.model_id"
        )
    ).all()
    for batch, yb, ob, count, task, output_dim in labelled:
        dtype, shape = _packing(task, output_dim)
        y = np.frombuffer(yb, dtype).reshape(count, *shape)
        offsets = np.frombuffer(ob, np.int64)
        for pos in np.flatnonzero(offsets >= 0).tolist():
            conn.execute(
                sa.update(preds)
                .where(preds.c.batch_id == batch, preds.c.position == pos)
                .values(label=y[pos].tolist(), offset=int(offsets[pos]))
            )
    op.drop_table("prediction_labels")
    op.execute("ALTER TABLE prediction_batches DROP COLUMN token")  # (see the upgrade)
