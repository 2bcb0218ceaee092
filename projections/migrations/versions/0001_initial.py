"""The initial projection schema: deliveries, attempts, offsets, destinations, tokens, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("delivery_id", sa.String(), primary_key=True),
        sa.Column("destination_id", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("absence_id", sa.String(), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("change", sa.String(), nullable=False),
        sa.Column("operation", sa.String(), nullable=False),
        sa.Column("employee_id", sa.String(), nullable=False),
        sa.Column("employee_name", sa.String(), nullable=False),
        sa.Column("employee_email", sa.String()),
        sa.Column("start_date", sa.Date, nullable=False),
        sa.Column("end_date", sa.Date, nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("manual", sa.Boolean, nullable=False),
        sa.Column("trigger", sa.String(), nullable=False),
        sa.Column("attempt_count", sa.Integer, nullable=False),
        sa.Column("next_retry_at", TS),
        sa.Column("last_error", sa.Text),
        sa.Column("status_at", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_deliveries_status", "deliveries", ["status"])
    op.create_index("ix_deliveries_destination", "deliveries", ["destination_id", "status_at"])
    op.create_index("ix_deliveries_employee_name", "deliveries", ["employee_name"])
    op.create_index("ix_deliveries_absence", "deliveries", ["absence_id"])
    op.create_index("ix_deliveries_dates", "deliveries", ["start_date", "end_date"])
    op.create_index("ix_deliveries_cursor", "deliveries", ["updated_at", "delivery_id"])
    op.create_index("ix_deliveries_tenant_cursor", "deliveries", ["tenant", "updated_at", "delivery_id"])

    op.create_table(
        "attempts",
        sa.Column("status_id", sa.String(), primary_key=True),
        sa.Column("delivery_id", sa.String(), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("trigger", sa.String(), nullable=False),
        sa.Column("request_method", sa.String(), nullable=False),
        sa.Column("request_url", sa.Text, nullable=False),
        sa.Column("request_headers", sa.JSON, nullable=False),
        sa.Column("request_body", sa.Text, nullable=False),
        sa.Column("response_status", sa.Integer),
        sa.Column("response_headers", sa.JSON, nullable=False),
        sa.Column("response_body", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("calls", sa.JSON, nullable=False),
    )
    op.create_index("ix_attempts_delivery", "attempts", ["delivery_id", "number"])

    op.create_table(
        "consumer_offsets",
        sa.Column("consumer", sa.String(), primary_key=True),
        sa.Column("topic", sa.String(), primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
    )

    op.create_table(
        "destinations",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("filters", sa.JSON, nullable=False),
        sa.Column("changes", sa.String(), nullable=False),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("secret_names", sa.JSON, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("updated_by", sa.String(), nullable=False),
    )
    op.create_index("ix_destinations_tenant", "destinations", ["tenant"])

    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("right", sa.String(), nullable=False),
        sa.Column("tenant", sa.String()),
        sa.Column("token_hash", sa.String(), nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS),
        sa.CheckConstraint("\"right\" IN ('view', 'configure')", name="ck_api_tokens_right"),
    )

    op.create_table(
        "destination_audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("destination_id", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("changes", sa.JSON, nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_destination_audit_destination", "destination_audit", ["destination_id", "at"])


def downgrade() -> None:
    for table in (
        "destination_audit",
        "api_tokens",
        "destinations",
        "consumer_offsets",
        "attempts",
        "deliveries",
    ):
        op.drop_table(table)
