"""models.checkpoint_seconds: the time cadence of online checkpoints (an ``online``
version is committed once ``checkpoint_every`` samples were applied since the newest
version *and* at least ``checkpoint_seconds`` passed since the learner's last version;
0 is the count-only cadence). Existing models get the default, 1 second.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models") as b:
        b.add_column(sa.Column("checkpoint_seconds", sa.Float(), server_default="1.0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("models") as b:
        b.drop_column("checkpoint_seconds")
