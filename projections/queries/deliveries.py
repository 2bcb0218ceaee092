"""Deliveries and their attempts, as the view holds them (sync; pass an ``Engine`` or a ``Connection``).

``tenant=None`` means every tenant (an admin token); otherwise rows of other tenants are invisible.
Lists are keyset-paginated on (updated_at desc, delivery_id desc): the cursor is opaque to clients
and stable while rows are added. :func:`changes_since` and :func:`latest_update` serve the live
stream (``/api/v1/deliveries/stream``): changes in the order they reached the view.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass

import sqlalchemy as sa

from projections.db import attempts, deliveries, delivery_counts
from projections.exceptions import BadCursorError
from projections.queries.base import Bind, connection

MAX_LIMIT = 500
CHANGES_PAGE = 500
"""At most this many rows per read of :func:`changes_since` (per window)."""
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


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
    external_id: str | None
    """The created item's id, as of the latest success (None before, or if the destination gave none)."""


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


_SUMMARY_COLUMNS = [deliveries.c[name] for name in DeliverySummary.__slots__]
_ATTEMPT_COLUMNS = [attempts.c[name] for name in AttemptView.__slots__]


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
    bind: Bind,
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
    with connection(bind) as conn:
        rows = conn.execute(query).all()
    items = [DeliverySummary(*row) for row in rows[:limit]]
    next_cursor = encode_cursor(items[-1].updated_at, items[-1].delivery_id) if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)


def get_delivery(bind: Bind, delivery_id: str, *, tenant: str | None) -> DeliveryDetail | None:
    """One delivery with its attempts (by number), or None (also when it belongs to another tenant)."""
    query = sa.select(*_SUMMARY_COLUMNS).where(deliveries.c.delivery_id == delivery_id)
    if tenant is not None:
        query = query.where(deliveries.c.tenant == tenant)
    with connection(bind) as conn:
        row = conn.execute(query).first()
        if row is None:
            return None
        attempt_rows = conn.execute(
            sa.select(*_ATTEMPT_COLUMNS)
            .where(attempts.c.delivery_id == delivery_id)
            .order_by(attempts.c.number, attempts.c.started_at, attempts.c.status_id)
        ).all()
    return DeliveryDetail(delivery=DeliverySummary(*row), attempts=[AttemptView(*a) for a in attempt_rows])


def count_by_status(bind: Bind, *, tenant: str | None, destination_id: str | None = None) -> dict[str, int]:
    """Number of deliveries per status (statuses without deliveries are absent); reads the counts the
    projector keeps, not the deliveries."""
    c = delivery_counts.c
    query = sa.select(c.status, sa.func.sum(c.count)).group_by(c.status)
    if tenant is not None:
        query = query.where(c.tenant == tenant)
    if destination_id is not None:
        query = query.where(c.destination_id == destination_id)
    with connection(bind) as conn:
        return {status: int(count) for status, count in conn.execute(query) if count}


def changes_since(
    bind: Bind, watermark: dt.datetime, *, tenant: str | None, lookback: dt.timedelta
) -> list[DeliverySummary]:
    """Rows that landed late in the window ``(watermark - lookback, watermark]``, then rows changed
    after ``watermark``; each part oldest change first and at most :data:`CHANGES_PAGE` rows (the
    next read goes on from the newest returned). A row may come back in both reads of the window:
    the caller skips what it has sent."""
    c = deliveries.c
    base = sa.select(*_SUMMARY_COLUMNS).order_by(c.updated_at, c.delivery_id).limit(CHANGES_PAGE)
    if tenant is not None:
        base = base.where(c.tenant == tenant)
    late = base.where(c.updated_at > watermark - lookback, c.updated_at <= watermark)
    new = base.where(c.updated_at > watermark)
    with connection(bind) as conn:
        return [DeliverySummary(*row) for query in (late, new) for row in conn.execute(query)]


def latest_update(bind: Bind, *, tenant: str | None) -> dt.datetime:
    """The newest ``updated_at`` of the (tenant's) deliveries; :data:`EPOCH` when there are none."""
    query = sa.select(sa.func.max(deliveries.c.updated_at))
    if tenant is not None:
        query = query.where(deliveries.c.tenant == tenant)
    with connection(bind) as conn:
        latest: dt.datetime | None = conn.execute(query).scalar()
    return latest or EPOCH
