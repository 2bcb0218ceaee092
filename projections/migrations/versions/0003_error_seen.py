"""The latest error and success each delivery has seen, so ``last_error`` does not depend on the
order status facts arrive in (projections/projector.py ``merge``).

Existing rows: the shown error counts as seen at the row's status time, and a SUCCESSFUL row's
status time as its latest success.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("error_seen", sa.Text))
        batch.add_column(sa.Column("error_seen_at", TS))
        batch.add_column(sa.Column("success_at", TS))
    op.execute(
        "UPDATE deliveries SET error_seen = last_error, error_seen_at = status_at WHERE last_error IS NOT NULL"
    )
    op.execute("UPDATE deliveries SET success_at = status_at WHERE status = 'SUCCESSFUL'")


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("success_at")
        batch.drop_column("error_seen_at")
        batch.drop_column("error_seen")
