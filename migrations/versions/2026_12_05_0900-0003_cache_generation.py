"""cache_generation and cache_marks: how every API process learns that what it cached of
keys, aliases, versions and models has changed (app.core.cache).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    gen = op.create_table(
        "cache_generation",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cache_generation")),
    )
    op.bulk_insert(gen, [{"id": 1, "value": 0}])
    op.create_table(
        "cache_marks",
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("subject", name=op.f("pk_cache_marks")),
    )
    op.create_index(op.f("ix_cache_marks_generation"), "cache_marks", ["generation"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_cache_marks_generation"), table_name="cache_marks")
    op.drop_table("cache_marks")
    op.drop_table("cache_generation")
