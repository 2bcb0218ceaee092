"""The employee's legal entity and department on each delivery, to filter the follow-up by them.

Filled by the projector from DeliveryStatus v3 facts; rows projected from older facts keep NULL
(until a newer fact of the delivery arrives, or the view is rebuilt from facts that carry them).
One index each, on (column, updated_at): the list is read newest change first.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("legal_entity_id", sa.String()))
        batch.add_column(sa.Column("department_id", sa.String()))
    op.create_index("ix_deliveries_legal_entity", "deliveries", ["legal_entity_id", "updated_at"])
    op.create_index("ix_deliveries_department", "deliveries", ["department_id", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_department", "deliveries")
    op.drop_index("ix_deliveries_legal_entity", "deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("department_id")
        batch.drop_column("legal_entity_id")
