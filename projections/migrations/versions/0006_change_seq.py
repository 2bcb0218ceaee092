"""``deliveries.change_seq``: the order in which the projection wrote the rows (the live feed's cursor).

Every write of a delivery row gives it the next number, greater than every number already
committed: the projection's batches are serialised (SQLite: the write lock taken at BEGIN;
PostgreSQL: the ``consumer_offsets`` rows locked first), so numbers are committed in increasing
order and a reader that remembers the greatest number it saw misses no write (unlike ``updated_at``,
which comes from the processors' clocks). Rows written before this migration keep 0.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("change_seq", sa.BigInteger, nullable=False, server_default="0"))
    op.create_index("ix_deliveries_change_seq", "deliveries", ["change_seq"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_change_seq", "deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("change_seq")
