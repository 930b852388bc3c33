"""Merchants: the id of the hmac.key their API key digest was computed with (key rotation)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 04:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("merchants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("digest_key_id", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("merchants", schema=None) as batch_op:
        batch_op.drop_column("digest_key_id")
