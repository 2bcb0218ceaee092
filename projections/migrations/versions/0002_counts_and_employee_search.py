"""Status counts kept by the projector, and trigram indexes for the employee search (PostgreSQL).

``delivery_counts`` makes ``count_by_status`` read a few rows instead of counting every delivery.
On PostgreSQL, ``pg_trgm`` GIN indexes serve the case-insensitive substring search on employee
name and email; where the extension cannot be created the search still works, unindexed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
import structlog
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

log = structlog.get_logger(__name__)

TRIGRAM_INDEXES = {
    "ix_deliveries_employee_name_trgm": "lower(employee_name)",
    "ix_deliveries_employee_email_trgm": "lower(employee_email)",
}


def upgrade() -> None:
    op.create_table(
        "delivery_counts",
        sa.Column("tenant", sa.String(), primary_key=True),
        sa.Column("destination_id", sa.String(), primary_key=True),
        sa.Column("status", sa.String(), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    op.execute(
        "INSERT INTO delivery_counts (tenant, destination_id, status, count) "
        "SELECT tenant, destination_id, status, count(*) FROM deliveries GROUP BY tenant, destination_id, status"
    )
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    try:
        with bind.begin_nested():
            op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except sa.exc.DBAPIError as exc:
        log.warning("pg_trgm unavailable: employee search is not indexed", error=str(exc.orig))
        return
    for name, expression in TRIGRAM_INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON deliveries USING gin ({expression} gin_trgm_ops)")


def downgrade() -> None:
    for name in TRIGRAM_INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.drop_table("delivery_counts")
