"""Merchants: the replaced API key's digest and until when it still works (rotate-key with an overlap)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 12:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("merchants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("previous_key_digest", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("previous_key_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_merchants_previous_key_digest", ["previous_key_digest"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("merchants", schema=None) as batch_op:
        batch_op.drop_index("ix_merchants_previous_key_digest")
        batch_op.drop_column("previous_key_until")
        batch_op.drop_column("previous_key_digest")
