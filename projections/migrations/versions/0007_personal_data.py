"""Personal data lifetime (docs/privacy.md): the erasure ledger, and a mark on attempts whose
payloads and responses were dropped (past ABSYNC_PAYLOAD_RETENTION, or erased).

``erasures`` is not part of the view rebuilt from Kafka: like tokens and the audit trail it lives in
the database only, and it is what keeps a rebuild from showing an erased employee again.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("tenant", sa.String()),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("absences", sa.Integer, nullable=False),
        sa.Column("deliveries", sa.Integer, nullable=False),
    )
    op.create_index("ix_erasures_subject", "erasures", ["subject"])
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("payload_dropped", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_index("ix_attempts_started_at", "attempts", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_attempts_started_at", "attempts")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("payload_dropped")
    op.drop_index("ix_erasures_subject", "erasures")
    op.drop_table("erasures")
