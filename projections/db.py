"""The projection database: tables, engine and migrations.

One schema for SQLite (default: a file under ``data_dir``, WAL mode) and PostgreSQL
(``ABSYNC_DATABASE_URL=postgresql+psycopg://...``). Timestamps are stored in UTC and always read back
timezone-aware (:class:`UtcDateTime`), so both back-ends return the same values.

The schema is owned by the Alembic migrations in ``projections/migrations`` (run at start by
:func:`migrate`); the tables below mirror them for queries. A schema change = a new migration + the
same change here.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Dialect, Engine

from streams.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config

log = structlog.get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
MIGRATION_LOCK_ID = 0x616273796E63  # "absync": the PostgreSQL advisory lock held while migrating


class UtcDateTime(sa.types.TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on every back-end (SQLite keeps naive UTC text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give a timezone-aware one")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


metadata = sa.MetaData()

deliveries = sa.Table(
    "deliveries",
    metadata,
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
    sa.Column("manual", sa.Boolean, nullable=False, default=False),
    sa.Column("trigger", sa.String(), nullable=False),
    sa.Column("attempt_count", sa.Integer, nullable=False, default=0),
    sa.Column("next_retry_at", UtcDateTime),
    sa.Column("last_error", sa.Text, doc="the error shown (see projections.projector.merge)"),
    sa.Column("error_seen", sa.Text, doc="the error of the latest fact that carried one"),
    sa.Column("error_seen_at", UtcDateTime, doc="occurred_at of that fact"),
    sa.Column("success_at", UtcDateTime, doc="occurred_at of the latest SUCCESSFUL fact"),
    sa.Column("external_id", sa.Text, doc="the created item's id, from the latest success that had one"),
    sa.Column("legal_entity_id", sa.String(), doc="the employee's, from the shown fact (NULL: older facts)"),
    sa.Column("department_id", sa.String(), doc="the employee's, from the shown fact (NULL: none or older)"),
    sa.Column("status_at", UtcDateTime, nullable=False, doc="occurred_at of the event that set `status`"),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column(
        "change_seq",
        sa.BigInteger,
        nullable=False,
        server_default="0",
        doc="order of the projection's writes (see migration 0006): the live feed's cursor",
    ),
    sa.Index("ix_deliveries_status", "status"),
    sa.Index("ix_deliveries_destination", "destination_id", "status_at"),
    sa.Index("ix_deliveries_employee_name", "employee_name"),
    sa.Index("ix_deliveries_absence", "absence_id"),
    sa.Index("ix_deliveries_dates", "start_date", "end_date"),
    sa.Index("ix_deliveries_cursor", "updated_at", "delivery_id"),
    sa.Index("ix_deliveries_tenant_cursor", "tenant", "updated_at", "delivery_id"),
    sa.Index("ix_deliveries_change_seq", "change_seq"),
    sa.Index("ix_deliveries_legal_entity", "legal_entity_id", "updated_at"),
    sa.Index("ix_deliveries_department", "department_id", "updated_at"),
)

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("status_id", sa.String(), primary_key=True, doc="the DeliveryStatus that carried it"),
    sa.Column("delivery_id", sa.String(), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
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
    sa.Column(
        "payload_dropped",
        sa.Boolean,
        nullable=False,
        default=False,
        doc="payloads and responses dropped (past ABSYNC_PAYLOAD_RETENTION, or erased): docs/privacy.md",
    ),
    sa.Index("ix_attempts_delivery", "delivery_id", "number"),
    sa.Index("ix_attempts_started_at", "started_at"),
)

delivery_counts = sa.Table(
    "delivery_counts",
    metadata,
    sa.Column("tenant", sa.String(), primary_key=True),
    sa.Column("destination_id", sa.String(), primary_key=True),
    sa.Column("status", sa.String(), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False, doc="kept by the projector with the rows"),
)

consumer_offsets = sa.Table(
    "consumer_offsets",
    metadata,
    sa.Column("consumer", sa.String(), primary_key=True),
    sa.Column("topic", sa.String(), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
)

destinations = sa.Table(
    "destinations",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("tenant", sa.String(), nullable=False),
    sa.Column("name", sa.String(), nullable=False),
    sa.Column("kind", sa.String(), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("filters", sa.JSON, nullable=False),
    sa.Column("changes", sa.String(), nullable=False),
    sa.Column("settings", sa.JSON, nullable=False),
    sa.Column("secret_names", sa.JSON, nullable=False, doc="names only: values never leave Kafka"),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("updated_by", sa.String(), nullable=False),
    sa.Index("ix_destinations_tenant", "tenant"),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("name", sa.String(), nullable=False),
    sa.Column("right", sa.String(), nullable=False),
    sa.Column("tenant", sa.String()),
    sa.Column("token_hash", sa.String(), nullable=False, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime),
    sa.Column("expires_at", UtcDateTime),
    sa.CheckConstraint("\"right\" IN ('view', 'configure')", name="ck_api_tokens_right"),
)

console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("token_hash", sa.String(), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("ended_at", UtcDateTime),
    sa.Index("ix_console_sessions_expires_at", "expires_at"),
)

destination_audit = sa.Table(
    "destination_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("destination_id", sa.String(), nullable=False),
    sa.Column("tenant", sa.String(), nullable=False),
    sa.Column("actor", sa.String(), nullable=False),
    sa.Column("action", sa.String(), nullable=False),
    sa.Column("changes", sa.JSON, nullable=False, doc="secret values masked"),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Index("ix_destination_audit_destination", "destination_id", "at"),
)

destination_health = sa.Table(
    "destination_health",
    metadata,
    sa.Column("destination_id", sa.String(), primary_key=True),
    sa.Column("tenant", sa.String(), nullable=False),
    sa.Column("last_success_at", UtcDateTime, doc="occurred_at of the latest successful attempt"),
    sa.Column("last_failure_at", UtcDateTime, doc="occurred_at of the latest failed attempt"),
    sa.Column(
        "failing_since", UtcDateTime, doc="first failed attempt since the last success (None: healthy)"
    ),
    sa.Column("last_error", sa.Text),
    sa.Column("window_start", UtcDateTime, doc="re-enabled at: earlier failures do not count"),
    sa.Column("successes", sa.BigInteger, nullable=False, doc="successful attempts, ever"),
    sa.Column("failures", sa.BigInteger, nullable=False, doc="failed attempts, ever"),
)

health_notices = sa.Table(
    "health_notices",
    metadata,
    sa.Column("destination_id", sa.String(), primary_key=True),
    sa.Column("state", sa.String(), nullable=False, doc="healthy or failing: what operators were told"),
    sa.Column("failing_since", UtcDateTime),
    sa.Column("disabled_revision", sa.Integer, nullable=False, doc="last auto-disable recorded"),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

health_events = sa.Table(
    "health_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("destination_id", sa.String(), nullable=False),
    sa.Column("tenant", sa.String(), nullable=False),
    sa.Column("event", sa.String(), nullable=False, doc="failing, disabled or recovered"),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("notify_status", sa.String(), nullable=False, doc="pending, sent, failed or none"),
    sa.Column("notify_attempts", sa.Integer, nullable=False),
    sa.Column("notify_error", sa.Text),
    sa.Column("sent_to", sa.String(), nullable=False, doc="targets done, comma-separated (slack, webhook)"),
    sa.Column("next_try_at", UtcDateTime),
    sa.Index("ix_health_events_destination", "destination_id", "at"),
    sa.Index("ix_health_events_outbox", "notify_status", "next_try_at"),
)

alert_settings = sa.Table(
    "alert_settings",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("slack_channel", sa.String()),
    sa.Column("slack_base_url", sa.String()),
    sa.Column("slack_token", sa.Text, doc="Fernet token (streams.secrets.SecretBox)"),
    sa.Column("webhook_url", sa.Text),
    sa.Column("webhook_secret", sa.Text, doc="Fernet token (streams.secrets.SecretBox)"),
    sa.Column("updated_by", sa.String(), nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

erasures = sa.Table(
    "erasures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("subject", sa.String(), nullable=False, doc="keyed hash of the email, never the email"),
    sa.Column("tenant", sa.String(), doc="the erasure's tenant (None: every tenant)"),
    sa.Column("actor", sa.String(), nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("absences", sa.Integer, nullable=False),
    sa.Column("deliveries", sa.Integer, nullable=False),
    sa.Index("ix_erasures_subject", "subject"),
)
"""The erasure ledger (projections/privacy.py): not rebuilt from Kafka, it keeps a rebuild from
showing an erased employee again."""

VIEW_TABLES = (deliveries, attempts, delivery_counts, destinations, destination_health)
"""Everything rebuilt from Kafka (with the offsets of their consumer)."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the driver, open transactions (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _enable_wal(engine: Engine) -> None:
    """WAL: readers (the web API) never block the projection's writer. The mode is stored in the
    file; switching is done once here, not per connection (a switch racing a transaction fails)."""
    raw = engine.raw_connection()
    try:
        raw.cursor().execute("PRAGMA journal_mode=WAL")
    finally:
        raw.close()


def _sqlite_begin(conn: Connection) -> None:
    """pysqlite opens transactions lazily (after reads); emit BEGIN ourselves so a transaction
    sees one snapshot. ``execution_options(sqlite_begin="IMMEDIATE")`` takes the write lock at once."""
    mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def engine_for(settings: Settings, **kwargs: Any) -> Engine:
    """The engine of ``settings.sqlalchemy_url`` (creating the SQLite file's directory if needed)."""
    return engine_from_url(settings.sqlalchemy_url, **kwargs)


def engine_from_url(url: str, **kwargs: Any) -> Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "begin", _sqlite_begin)
        if parsed.database and parsed.database != ":memory:":
            _enable_wal(engine)
        return engine
    return sa.create_engine(parsed, pool_pre_ping=True, **kwargs)


def writer(conn: Connection) -> Connection:
    """``conn`` set up for a write transaction (SQLite: take the write lock at BEGIN)."""
    return conn.execution_options(sqlite_begin="IMMEDIATE")


def alembic_config() -> Config:
    """Alembic configuration built in code: no alembic.ini at runtime."""
    # Alembic narrates every step at INFO on import and upgrade; our own log line says enough.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def migrate(engine: Engine) -> None:
    """Brings the schema to the newest migration (idempotent; safe at every start)."""
    from alembic import command

    config = alembic_config()
    # Components of one service start together and each migrates: serialize them, so the second
    # finds the schema the first made (SQLite: write lock at BEGIN; PostgreSQL: an advisory lock).
    with writer(engine.connect()) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_ID)))
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    log.info("projection schema up to date", database=engine.url.render_as_string(hide_password=True))
