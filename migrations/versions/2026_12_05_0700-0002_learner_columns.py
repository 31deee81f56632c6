"""learners: the one ``metrics`` JSON (published metrics, the adopted base and the messages
between the API and the learner) becomes three columns that say what they hold:
``prequential`` (the learner's published running metrics), ``base`` (the cut of a
non-online version the learner continues from) and ``mailbox`` (``checkpoint_requests``,
``checkpoint_replies``, ``resume``: messages between request handlers and the learner).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05 07:00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MAILBOX_KEYS = ("checkpoint_requests", "checkpoint_replies", "resume")


def _learners(*columns: str) -> sa.Table:
    return sa.table("learners", sa.column("model_id", sa.Integer()), *(sa.column(c, sa.JSON()) for c in columns))


def upgrade() -> None:
    with op.batch_alter_table("learners") as b:
        b.add_column(sa.Column("prequential", sa.JSON(), nullable=True))
        b.add_column(sa.Column("base", sa.JSON(), nullable=True))
        b.add_column(sa.Column("mailbox", sa.JSON(), nullable=True))
    conn = op.get_bind()
    old = _learners("metrics")
    new = _learners("prequential", "base", "mailbox")
    for model_id, metrics in conn.execute(sa.select(old.c.model_id, old.c.metrics)).all():
        md: dict[str, Any] = dict(metrics or {})
        conn.execute(
            new.update()
            .where(new.c.model_id == model_id)
            .values(
                prequential=md.get("prequential") or {},
                base=md.get("base"),
                mailbox={k: md[k] for k in MAILBOX_KEYS if k in md},
            )
        )
    conn.execute(new.update().where(new.c.prequential.is_(None)).values(prequential={}))
    conn.execute(new.update().where(new.c.mailbox.is_(None)).values(mailbox={}))
    with op.batch_alter_table("learners") as b:
        b.alter_column("prequential", existing_type=sa.JSON(), nullable=False)
        b.alter_column("mailbox", existing_type=sa.JSON(), nullable=False)
        b.drop_column("metrics")


def downgrade() -> None:
    with op.batch_alter_table("learners") as b:
        b.add_column(sa.Column("metrics", sa.JSON(), nullable=True))
    conn = op.get_bind()
    cur = _learners("prequential", "base", "mailbox")
    old = _learners("metrics")
    rows = conn.execute(sa.select(cur.c.model_id, cur.c.prequential, cur.c.base, cur.c.mailbox)).all()
    for model_id, prequential, base, mailbox in rows:
        md: dict[str, Any] = dict(mailbox or {})
        if prequential:
            md["prequential"] = prequential
        if base is not None:
            md["base"] = base
        conn.execute(old.update().where(old.c.model_id == model_id).values(metrics=md))
    with op.batch_alter_table("learners") as b:
        b.alter_column("metrics", existing_type=sa.JSON(), nullable=False)
        b.drop_column("mailbox")
        b.drop_column("base")
        b.drop_column("prequential")
