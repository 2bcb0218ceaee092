"""Read side of the view, used by the web API (sync; pass an ``Engine`` or a ``Connection``).

``tenant=None`` means every tenant (an admin token); otherwise rows of other tenants are invisible.
Lists are keyset-paginated on (updated_at desc, delivery_id desc): the cursor is opaque to clients
and stable while rows are added.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from projections.db import attempts, deliveries, delivery_counts, destinations
from projections.exceptions import BadCursorError

HEALTH_WINDOW = 100
"""The success rate of a destination is computed over its last this many finished deliveries."""
MAX_LIMIT = 500


@dataclass(frozen=True, slots=True)
class DeliverySummary:
    delivery_id: str
    destination_id: str
    tenant: str
    absence_id: str
    version: int
    change: str
    operation: str
    employee_id: str
    employee_name: str
    employee_email: str | None
    start_date: dt.date
    end_date: dt.date
    status: str
    manual: bool
    trigger: str
    attempt_count: int
    next_retry_at: dt.datetime | None
    last_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class AttemptView:
    status_id: str
    number: int
    started_at: dt.datetime
    duration_ms: float
    trigger: str
    request_method: str
    request_url: str
    request_headers: dict[str, str]
    request_body: str
    response_status: int | None
    response_headers: dict[str, str]
    response_body: str | None
    error: str | None
    calls: list[dict[str, str]]


@dataclass(frozen=True, slots=True)
class DeliveryDetail:
    delivery: DeliverySummary
    attempts: list[AttemptView]


@dataclass(frozen=True, slots=True)
class Page:
    items: list[DeliverySummary]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class DestinationHealth:
    success_rate: float | None
    """Successful / finished (SUCCESSFUL or ERROR) over the last HEALTH_WINDOW; None when none."""
    last_error: str | None
    last_error_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class DestinationView:
    id: str
    tenant: str
    name: str
    kind: str
    enabled: bool
    filters: dict[str, list[str]]
    changes: str
    settings: dict[str, Any]
    secret_names: list[str]
    revision: int
    updated_at: dt.datetime
    updated_by: str


_SUMMARY_COLUMNS = [deliveries.c[name] for name in DeliverySummary.__slots__]
_ATTEMPT_COLUMNS = [attempts.c[name] for name in AttemptView.__slots__]
_DESTINATION_COLUMNS = [destinations.c[name] for name in DestinationView.__slots__]


@contextmanager
def _connection(bind: Engine | Connection) -> Iterator[Connection]:
    if isinstance(bind, Connection):
        yield bind
    else:
        with bind.connect() as conn:
            yield conn


def encode_cursor(updated_at: dt.datetime, delivery_id: str) -> str:
    raw = json.dumps([updated_at.isoformat(), delivery_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, delivery_id = json.loads(raw)
        updated_at = dt.datetime.fromisoformat(at)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadCursorError(f"invalid cursor: {cursor!r}") from exc
    if updated_at.tzinfo is None or not isinstance(delivery_id, str):
        raise BadCursorError(f"invalid cursor: {cursor!r}")
    return updated_at, delivery_id


def _like_pattern(term: str) -> str:
    escaped = term.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_deliveries(
    bind: Engine | Connection,
    *,
    tenant: str | None,
    status: str | None = None,
    destination_id: str | None = None,
    employee: str | None = None,
    absence_id: str | None = None,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Page:
    """Deliveries, newest change first. ``employee``: case-insensitive substring of name or email;
    ``date_from``/``date_to``: the absence overlaps [date_from, date_to]."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    c = deliveries.c
    conditions: list[sa.ColumnElement[bool]] = []
    if tenant is not None:
        conditions.append(c.tenant == tenant)
    if status is not None:
        conditions.append(c.status == status.upper())
    if destination_id is not None:
        conditions.append(c.destination_id == destination_id)
    if absence_id is not None:
        conditions.append(c.absence_id == absence_id)
    if employee:
        pattern = _like_pattern(employee)
        conditions.append(
            sa.or_(
                sa.func.lower(c.employee_name).like(pattern, escape="\\"),
                sa.func.lower(c.employee_email).like(pattern, escape="\\"),
            )
        )
    if date_from is not None:
        conditions.append(c.end_date >= date_from)
    if date_to is not None:
        conditions.append(c.start_date <= date_to)
    if cursor is not None:
        at, last_id = decode_cursor(cursor)
        conditions.append(sa.or_(c.updated_at < at, sa.and_(c.updated_at == at, c.delivery_id < last_id)))
    query = (
        sa.select(*_SUMMARY_COLUMNS)
        .where(*conditions)
        .order_by(c.updated_at.desc(), c.delivery_id.desc())
        .limit(limit + 1)
    )
    with _connection(bind) as conn:
        rows = conn.execute(query).all()
    items = [DeliverySummary(*row) for row in rows[:limit]]
    next_cursor = encode_cursor(items[-1].updated_at, items[-1].delivery_id) if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)


def get_delivery(bind: Engine | Connection, delivery_id: str, *, tenant: str | None) -> DeliveryDetail | None:
    """One delivery with its attempts (by number), or None (also when it belongs to another tenant)."""
    query = sa.select(*_SUMMARY_COLUMNS).where(deliveries.c.delivery_id == delivery_id)
    if tenant is not None:
        query = query.where(deliveries.c.tenant == tenant)
    with _connection(bind) as conn:
        row = conn.execute(query).first()
        if row is None:
            return None
        attempt_rows = conn.execute(
            sa.select(*_ATTEMPT_COLUMNS)
            .where(attempts.c.delivery_id == delivery_id)
            .order_by(attempts.c.number, attempts.c.started_at, attempts.c.status_id)
        ).all()
    return DeliveryDetail(delivery=DeliverySummary(*row), attempts=[AttemptView(*a) for a in attempt_rows])


def count_by_status(
    bind: Engine | Connection, *, tenant: str | None, destination_id: str | None = None
) -> dict[str, int]:
    """Number of deliveries per status (statuses without deliveries are absent); reads the counts the
    projector keeps, not the deliveries."""
    c = delivery_counts.c
    query = sa.select(c.status, sa.func.sum(c.count)).group_by(c.status)
    if tenant is not None:
        query = query.where(c.tenant == tenant)
    if destination_id is not None:
        query = query.where(c.destination_id == destination_id)
    with _connection(bind) as conn:
        return {status: int(count) for status, count in conn.execute(query) if count}


def destination_health(bind: Engine | Connection, destination_id: str) -> DestinationHealth:
    c = deliveries.c
    finished = (
        sa.select(c.status)
        .where(c.destination_id == destination_id, c.status.in_(("SUCCESSFUL", "ERROR")))
        .order_by(c.status_at.desc())
        .limit(HEALTH_WINDOW)
        .subquery()
    )
    rate_query = sa.select(
        sa.func.count(),
        sa.func.coalesce(sa.func.sum(sa.case((finished.c.status == "SUCCESSFUL", 1), else_=0)), 0),
    )
    error_query = (
        sa.select(c.last_error, c.status_at)
        .where(c.destination_id == destination_id, c.status == "ERROR", c.last_error.is_not(None))
        .order_by(c.status_at.desc())
        .limit(1)
    )
    with _connection(bind) as conn:
        total, successful = conn.execute(rate_query).one()
        last = conn.execute(error_query).first()
    return DestinationHealth(
        success_rate=int(successful) / int(total) if total else None,
        last_error=last.last_error if last else None,
        last_error_at=last.status_at if last else None,
    )


def list_destinations(bind: Engine | Connection, tenant: str | None) -> list[DestinationView]:
    query = sa.select(*_DESTINATION_COLUMNS).order_by(destinations.c.name, destinations.c.id)
    if tenant is not None:
        query = query.where(destinations.c.tenant == tenant)
    with _connection(bind) as conn:
        return [DestinationView(*row) for row in conn.execute(query)]


def get_destination(
    bind: Engine | Connection, destination_id: str, tenant: str | None
) -> DestinationView | None:
    query = sa.select(*_DESTINATION_COLUMNS).where(destinations.c.id == destination_id)
    if tenant is not None:
        query = query.where(destinations.c.tenant == tenant)
    with _connection(bind) as conn:
        row = conn.execute(query).first()
    return DestinationView(*row) if row else None
