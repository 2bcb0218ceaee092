"""Destination health as projected (:mod:`projections.health`) and its history of health events
(written by :mod:`absync.health.monitor`), for the API."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from projections.db import destination_health, health_events
from projections.queries.base import Bind, connection


@dataclass(frozen=True, slots=True)
class AttemptHealth:
    last_success_at: dt.datetime | None
    last_failure_at: dt.datetime | None
    failing_since: dt.datetime | None
    """First failed attempt since the last success; None: not failing."""
    last_error: str | None
    successes: int
    failures: int


NO_ATTEMPT = AttemptHealth(None, None, None, None, 0, 0)


@dataclass(frozen=True, slots=True)
class HealthEventView:
    id: int
    event: str
    at: dt.datetime
    summary: str
    notify_status: str
    notify_attempts: int
    notify_error: str | None


_HEALTH_COLUMNS = [destination_health.c[name] for name in AttemptHealth.__slots__]
_EVENT_COLUMNS = [health_events.c[name] for name in HealthEventView.__slots__]


def attempt_health(bind: Bind, destination_id: str) -> AttemptHealth:
    """What the destination's attempts say (:data:`NO_ATTEMPT` before its first one)."""
    query = sa.select(*_HEALTH_COLUMNS).where(destination_health.c.destination_id == destination_id)
    with connection(bind) as conn:
        row = conn.execute(query).first()
    return AttemptHealth(*row) if row else NO_ATTEMPT


def health_history(bind: Bind, destination_id: str, *, limit: int = 100) -> list[HealthEventView]:
    """The destination's health events, newest first (at most ``limit``)."""
    e = health_events.c
    query = (
        sa.select(*_EVENT_COLUMNS)
        .where(e.destination_id == destination_id)
        .order_by(e.at.desc(), e.id.desc())
        .limit(limit)
    )
    with connection(bind) as conn:
        return [HealthEventView(*row) for row in conn.execute(query)]
