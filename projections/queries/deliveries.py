"""Deliveries and their attempts, as the view holds them (sync; pass an ``Engine`` or a ``Connection``).

``tenant=None`` means every tenant (an admin token); otherwise rows of other tenants are invisible.
Lists are keyset-paginated on (updated_at desc, delivery_id desc): the cursor is opaque to clients
and stable while rows are added. :func:`change_position`, :func:`changes_after` and
:func:`all_counts` serve the live change feed (:mod:`absync.web.feed`): rows in the order the
projection wrote them.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa

from projections.db import attempts, deliveries, delivery_counts, destinations
from projections.exceptions import BadCursorError
from projections.queries.base import Bind, connection

MAX_LIMIT = 500
TRIGGERS = ("automatic", "retry", "replay", "manual")
"""What the ``trigger`` filter takes: ``manual`` is a delivery marked as processed by hand (its
``manual`` flag); the others are the trigger of the fact shown, for rows not marked by hand."""
EXPORT_PAGE = 1000
"""Rows per read of :func:`export_deliveries` (each read a keyset page: no long-held cursor)."""
CHANGES_PAGE = 2000
"""At most this many rows per read of :func:`changes_after`."""


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
    legal_entity_id: str | None
    department_id: str | None
    """The employee's, as the shown fact carried them (None for facts written before schema v3)."""


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


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """What the follow-up list is filtered by (every field optional; all given must hold).

    ``employee``: case-insensitive substring of name or email; ``date_from``/``date_to``: the absence
    overlaps [date_from, date_to]; ``tenant``: one tenant (narrows, never widens, the caller's
    scope); ``trigger``: one of :data:`TRIGGERS`; ``kind``: the destination's kind, as the view's
    destinations hold it."""

    status: str | None = None
    destination_id: str | None = None
    employee: str | None = None
    absence_id: str | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    tenant: str | None = None
    trigger: str | None = None
    kind: str | None = None
    legal_entity_id: str | None = None
    department_id: str | None = None


def _conditions(scope: str | None, f: DeliveryFilter) -> list[sa.ColumnElement[bool]]:
    c = deliveries.c
    conditions: list[sa.ColumnElement[bool]] = []
    if scope is not None:
        conditions.append(c.tenant == scope)
    if f.tenant is not None:
        conditions.append(c.tenant == f.tenant)
    if f.status is not None:
        conditions.append(c.status == f.status.upper())
    if f.destination_id is not None:
        conditions.append(c.destination_id == f.destination_id)
    if f.absence_id is not None:
        conditions.append(c.absence_id == f.absence_id)
    if f.employee:
        pattern = _like_pattern(f.employee)
        conditions.append(
            sa.or_(
                sa.func.lower(c.employee_name).like(pattern, escape="\\"),
                sa.func.lower(c.employee_email).like(pattern, escape="\\"),
            )
        )
    if f.date_from is not None:
        conditions.append(c.end_date >= f.date_from)
    if f.date_to is not None:
        conditions.append(c.start_date <= f.date_to)
    if f.trigger is not None:
        trigger = f.trigger.lower()
        if trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {', '.join(TRIGGERS)}")
        if trigger == "manual":
            conditions.append(c.manual.is_(True))
        else:
            conditions.append(sa.and_(c.trigger == trigger, c.manual.is_(False)))
    if f.legal_entity_id is not None:
        conditions.append(c.legal_entity_id == f.legal_entity_id)
    if f.department_id is not None:
        conditions.append(c.department_id == f.department_id)
    if f.kind is not None:
        kinds = sa.select(destinations.c.id).where(destinations.c.kind == f.kind)
        if scope is not None:
            kinds = kinds.where(destinations.c.tenant == scope)
        conditions.append(c.destination_id.in_(kinds))
    return conditions


def _after(cursor: str) -> sa.ColumnElement[bool]:
    c = deliveries.c
    at, last_id = decode_cursor(cursor)
    return sa.or_(c.updated_at < at, sa.and_(c.updated_at == at, c.delivery_id < last_id))


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
    where: DeliveryFilter | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Page:
    """Deliveries of ``tenant`` (None: every tenant), newest change first, filtered by ``where``
    (the loose keywords are the same fields, kept for callers of before :class:`DeliveryFilter`)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    f = where or DeliveryFilter(
        status=status,
        destination_id=destination_id,
        employee=employee,
        absence_id=absence_id,
        date_from=date_from,
        date_to=date_to,
    )
    c = deliveries.c
    conditions = _conditions(tenant, f)
    if cursor is not None:
        conditions.append(_after(cursor))
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


def export_deliveries(
    bind: Bind, *, tenant: str | None, where: DeliveryFilter, max_rows: int
) -> Iterator[DeliverySummary]:
    """The rows :func:`list_deliveries` would page through, in the same order, at most ``max_rows``
    + 1 (one more tells the caller the list was cut). Read :data:`EXPORT_PAGE` rows at a time by
    keyset, each read its own short transaction: a slow reader holds no database cursor open."""
    c = deliveries.c
    conditions = _conditions(tenant, where)
    after: sa.ColumnElement[bool] | None = None
    left = max_rows + 1
    while left > 0:
        query = (
            sa.select(*_SUMMARY_COLUMNS)
            .where(*conditions, *([] if after is None else [after]))
            .order_by(c.updated_at.desc(), c.delivery_id.desc())
            .limit(min(EXPORT_PAGE, left))
        )
        with connection(bind) as conn:
            rows = conn.execute(query).all()
        for row in rows:
            yield DeliverySummary(*row)
        left -= len(rows)
        if len(rows) < EXPORT_PAGE:
            return
        last = rows[-1]
        after = sa.or_(
            c.updated_at < last.updated_at,
            sa.and_(c.updated_at == last.updated_at, c.delivery_id < last.delivery_id),
        )


@dataclass(frozen=True, slots=True)
class DeliveryRef:
    """What a command on a delivery names, and the delivery's status when it was read."""

    delivery_id: str
    destination_id: str
    absence_id: str
    tenant: str
    status: str


def delivery_refs(bind: Bind, *, tenant: str | None, where: DeliveryFilter, limit: int) -> list[DeliveryRef]:
    """The deliveries :func:`list_deliveries` shows for ``where`` (same filter, same tenant scope, same
    order: newest change first), at most ``limit``, in one read."""
    c = deliveries.c
    query = (
        sa.select(c.delivery_id, c.destination_id, c.absence_id, c.tenant, c.status)
        .where(*_conditions(tenant, where))
        .order_by(c.updated_at.desc(), c.delivery_id.desc())
        .limit(limit)
    )
    with connection(bind) as conn:
        return [DeliveryRef(*row) for row in conn.execute(query)]


def count_matching(
    bind: Bind, *, tenant: str | None, where: DeliveryFilter, limit: int
) -> dict[tuple[str, str, str], int]:
    """(tenant, destination id, status) -> deliveries, over the deliveries :func:`list_deliveries`
    shows for ``where``, counting at most ``limit`` of them (bounded work whatever matches: a sum of
    ``limit`` means "``limit`` or more")."""
    c = deliveries.c
    matching = sa.select(c.tenant, c.destination_id, c.status).where(*_conditions(tenant, where)).limit(limit)
    sub = matching.subquery()
    query = sa.select(sub.c.tenant, sub.c.destination_id, sub.c.status, sa.func.count()).group_by(
        sub.c.tenant, sub.c.destination_id, sub.c.status
    )
    with connection(bind) as conn:
        return {(t, d, s): int(n) for t, d, s, n in conn.execute(query)}


def current_status(bind: Bind, delivery_id: str, *, tenant: str | None) -> str | None:
    """The delivery's status in the view now, or None when it is not there (or is another tenant's)."""
    query = sa.select(deliveries.c.status).where(deliveries.c.delivery_id == delivery_id)
    if tenant is not None:
        query = query.where(deliveries.c.tenant == tenant)
    with connection(bind) as conn:
        value = conn.execute(query).scalar_one_or_none()
    return None if value is None else str(value)


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


def change_position(bind: Bind) -> int:
    """The greatest ``change_seq`` of the view (0 when empty): where a reader of changes starts."""
    with connection(bind) as conn:
        return int(
            conn.execute(sa.select(sa.func.coalesce(sa.func.max(deliveries.c.change_seq), 0))).scalar_one()
        )


def changes_after(bind: Bind, seq: int, *, limit: int = CHANGES_PAGE) -> list[tuple[int, DeliverySummary]]:
    """The rows written after number ``seq`` (``change_seq``, see migration 0006), in the order the
    projection wrote them, at most ``limit``: (number, row). Every tenant: the caller scopes them."""
    query = (
        sa.select(deliveries.c.change_seq, *_SUMMARY_COLUMNS)
        .where(deliveries.c.change_seq > seq)
        .order_by(deliveries.c.change_seq)
        .limit(limit)
    )
    with connection(bind) as conn:
        return [(number, DeliverySummary(*values)) for number, *values in conn.execute(query)]


def all_counts(bind: Bind) -> dict[tuple[str, str, str], int]:
    """``delivery_counts`` whole: (tenant, destination id, status) -> deliveries (zeros left out)."""
    c = delivery_counts.c
    with connection(bind) as conn:
        rows = conn.execute(sa.select(c.tenant, c.destination_id, c.status, c.count))
        return {(tenant, destination, status): int(n) for tenant, destination, status, n in rows if n}
