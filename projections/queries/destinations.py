"""Destinations as the view holds them, their health, and their audit trail (sync; pass an
``Engine`` or a ``Connection``).

The audit trail (``destination_audit``) is the one table here that is written outside the projector:
:func:`record_audit` is called by the destination-write service (``absync.services.destinations``)
after each write it publishes, and :func:`audit_trail` reads it back, newest first. An audit row
never holds a secret value (the caller masks them).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from projections.db import deliveries, destination_audit, destinations
from projections.queries.base import Bind, connection

HEALTH_WINDOW = 100
"""The success rate of a destination is computed over its last this many finished deliveries."""
MAX_AUDIT_LIMIT = 500


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


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    destination_id: str
    tenant: str
    actor: str
    action: str
    changes: dict[str, Any]
    """``{field: {"from": old, "to": new}}``; secret values are masked."""
    at: dt.datetime


_DESTINATION_COLUMNS = [destinations.c[name] for name in DestinationView.__slots__]
_AUDIT_COLUMNS = [destination_audit.c[name] for name in AuditRecord.__slots__]


def destination_health(bind: Bind, destination_id: str) -> DestinationHealth:
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
    with connection(bind) as conn:
        total, successful = conn.execute(rate_query).one()
        last = conn.execute(error_query).first()
    return DestinationHealth(
        success_rate=int(successful) / int(total) if total else None,
        last_error=last.last_error if last else None,
        last_error_at=last.status_at if last else None,
    )


def list_destinations(bind: Bind, tenant: str | None) -> list[DestinationView]:
    query = sa.select(*_DESTINATION_COLUMNS).order_by(destinations.c.name, destinations.c.id)
    if tenant is not None:
        query = query.where(destinations.c.tenant == tenant)
    with connection(bind) as conn:
        return [DestinationView(*row) for row in conn.execute(query)]


def get_destination(bind: Bind, destination_id: str, tenant: str | None) -> DestinationView | None:
    query = sa.select(*_DESTINATION_COLUMNS).where(destinations.c.id == destination_id)
    if tenant is not None:
        query = query.where(destinations.c.tenant == tenant)
    with connection(bind) as conn:
        row = conn.execute(query).first()
    return DestinationView(*row) if row else None


def record_audit(
    bind: Bind, *, destination_id: str, tenant: str, actor: str, action: str, changes: dict[str, Any]
) -> None:
    """Appends one audit row, stamped now (UTC); committed on return when ``bind`` is an engine."""
    row = {
        "destination_id": destination_id,
        "tenant": tenant,
        "actor": actor,
        "action": action,
        "changes": changes,
        "at": dt.datetime.now(dt.UTC),
    }
    if isinstance(bind, sa.engine.Engine):
        with bind.begin() as conn:
            conn.execute(destination_audit.insert().values(**row))
    else:
        bind.execute(destination_audit.insert().values(**row))


def audit_trail(
    bind: Bind, destination_id: str, *, tenant: str | None, limit: int = 100
) -> list[AuditRecord]:
    """The destination's audit rows, newest first (at most ``limit``); with ``tenant``, only rows of
    that tenant (an id reused by another tenant shows nothing of the first one's trail)."""
    if not 1 <= limit <= MAX_AUDIT_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_AUDIT_LIMIT}")
    c = destination_audit.c
    query = (
        sa.select(*_AUDIT_COLUMNS)
        .where(c.destination_id == destination_id)
        .order_by(c.at.desc(), c.id.desc())
        .limit(limit)
    )
    if tenant is not None:
        query = query.where(c.tenant == tenant)
    with connection(bind) as conn:
        return [AuditRecord(*row) for row in conn.execute(query)]


@dataclass(frozen=True, slots=True)
class AuditPage:
    items: list[AuditRecord]
    next_cursor: int | None
    """Pass back as ``before`` for the next (older) page; None on the last one."""


def audit_log(
    bind: Bind,
    *,
    tenant: str | None,
    destination_id: str | None = None,
    actor: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> AuditPage:
    """Audit rows of every destination, newest first (by id: the order they were written), paged by
    id. ``destination_id``: that destination only; ``actor``: case-insensitive substring of the
    actor's name; ``tenant``: only that tenant's rows (None: every tenant)."""
    if not 1 <= limit <= MAX_AUDIT_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_AUDIT_LIMIT}")
    c = destination_audit.c
    query = sa.select(*_AUDIT_COLUMNS).order_by(c.id.desc()).limit(limit + 1)
    if tenant is not None:
        query = query.where(c.tenant == tenant)
    if destination_id is not None:
        query = query.where(c.destination_id == destination_id)
    if actor:
        escaped = actor.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(sa.func.lower(c.actor).like(f"%{escaped}%", escape="\\"))
    if before is not None:
        query = query.where(c.id < before)
    with connection(bind) as conn:
        rows = [AuditRecord(*row) for row in conn.execute(query)]
    items = rows[:limit]
    return AuditPage(items=items, next_cursor=items[-1].id if len(rows) > limit else None)
