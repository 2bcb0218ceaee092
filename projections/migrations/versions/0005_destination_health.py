"""Destination health, operator alerts and the created item's id.

``deliveries.external_id``: the id the destination holds the absence under (DeliveryStatus v2).
``destination_health``: per destination, what its attempts say (rebuilt from delivery-status with the
view). ``health_notices``: the state operators were last told about and the auto-disable recorded
(kept across rebuilds, so a rebuild tells nobody twice). ``health_events``: the history of a
destination's health (failing, disabled, recovered) and the outbox of its notifications.
``alert_settings``: where notifications go (secrets Fernet-encrypted).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("external_id", sa.Text))
    op.create_table(
        "destination_health",
        sa.Column("destination_id", sa.String(), primary_key=True),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("last_success_at", TS),
        sa.Column("last_failure_at", TS),
        sa.Column("failing_since", TS),
        sa.Column("last_error", sa.Text),
        sa.Column("window_start", TS),
        sa.Column("successes", sa.BigInteger, nullable=False),
        sa.Column("failures", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "health_notices",
        sa.Column("destination_id", sa.String(), primary_key=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("failing_since", TS),
        sa.Column("disabled_revision", sa.Integer, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "health_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("destination_id", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("event", sa.String(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("notify_status", sa.String(), nullable=False),
        sa.Column("notify_attempts", sa.Integer, nullable=False),
        sa.Column("notify_error", sa.Text),
        sa.Column("sent_to", sa.String(), nullable=False),
        sa.Column("next_try_at", TS),
    )
    op.create_index("ix_health_events_destination", "health_events", ["destination_id", "at"])
    op.create_index("ix_health_events_outbox", "health_events", ["notify_status", "next_try_at"])
    op.create_table(
        "alert_settings",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("slack_channel", sa.String()),
        sa.Column("slack_base_url", sa.String()),
        sa.Column("slack_token", sa.Text),
        sa.Column("webhook_url", sa.Text),
        sa.Column("webhook_secret", sa.Text),
        sa.Column("updated_by", sa.String(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("alert_settings")
    op.drop_index("ix_health_events_outbox", "health_events")
    op.drop_index("ix_health_events_destination", "health_events")
    op.drop_table("health_events")
    op.drop_table("health_notices")
    op.drop_table("destination_health")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("external_id")
