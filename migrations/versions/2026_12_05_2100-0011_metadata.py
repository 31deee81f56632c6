"""Metadata and search: ``versions.description`` and ``versions.tags`` (changed with
``PATCH``, like a model's), and ``model_tags`` / ``version_tags``, one row per tag with an
index on ``(key, sha256 of the value)``, so ``?tag=key:value`` finds its rows through an
index on both databases. Existing models' tags are copied into ``model_tags``.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 21:00:00
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def upgrade() -> None:
    with op.batch_alter_table("versions") as b:
        b.add_column(sa.Column("description", sa.Text(), server_default="", nullable=False))
        b.add_column(sa.Column("tags", sa.JSON(), server_default="{}", nullable=False))
    for kind, owner, parent in (("model", "model_id", "models"), ("version", "version_id", "versions")):
        op.create_table(
            f"{kind}_tags",
            sa.Column(owner, sa.Integer(), nullable=False),
            sa.Column("key", sa.String(length=128), nullable=False),
            sa.Column("value", sa.Text(), nullable=False),
            sa.Column("digest", sa.String(length=32), nullable=False),
            sa.ForeignKeyConstraint(
                [owner], [f"{parent}.id"], name=op.f(f"fk_{kind}_tags_{owner}_{parent}"), ondelete="CASCADE"
            ),
            sa.PrimaryKeyConstraint(owner, "key", name=op.f(f"pk_{kind}_tags")),
        )
        op.create_index(f"ix_{kind}_tags_key_digest", f"{kind}_tags", ["key", "digest"])
    models = sa.table("models", sa.column("id", sa.Integer()), sa.column("tags", sa.JSON()))
    model_tags = sa.table(
        "model_tags",
        sa.column("model_id", sa.Integer()),
        sa.column("key", sa.String()),
        sa.column("value", sa.Text()),
        sa.column("digest", sa.String()),
    )
    rows = [
        {"model_id": mid, "key": str(k), "value": str(v), "digest": digest(str(v))}
        for mid, tags in op.get_bind().execute(sa.select(models.c.id, models.c.tags))
        for k, v in (tags or {}).items()
    ]
    if rows:
        op.bulk_insert(model_tags, rows)


def downgrade() -> None:
    for kind in ("version", "model"):
        op.drop_index(f"ix_{kind}_tags_key_digest", table_name=f"{kind}_tags")
        op.drop_table(f"{kind}_tags")
    with op.batch_alter_table("versions") as b:
        b.drop_column("tags")
        b.drop_column("description")
