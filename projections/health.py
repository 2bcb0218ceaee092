"""Destination health, projected from the delivery facts (no Kafka, no wall clock).

What counts
    A *success* is a SUCCESSFUL fact that is not an operator's Mark as processed. A *failure* is a
    PENDING or ERROR fact that carries an error from an attempt (a retryable or permanent failure of
    the destination, its configuration included); a delivery held back because the destination is
    disabled, or superseded, is neither. The row keeps, per destination, the latest success and
    failure, the first failure since the last success (``failing_since``: None when healthy), the
    latest error and the counts of both (for /metrics).

Order
    Facts of one destination come from several partitions, so they may be applied out of order. The
    latest times are maxima, hence order-free. ``failing_since`` is exact when facts arrive in order;
    when a success turns up late, after failures newer than it, the first failure after that success
    is not known any more and the latest failure stands for it: the failing period is then counted
    from later than it truly began, never from earlier (a destination is never disabled too soon).

Re-enabling
    When a destination is enabled again after being disabled, its failing period ends there
    (``window_start``): failures before it no longer count, so a destination that was disabled for
    failing gets a full period again before it can be disabled again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from projections.db import destination_health
from schemas.delivery import NOT_SENT_DISABLED, DeliveryStatus, Status
from schemas.destination import Destination

Row = dict[str, Any]
ERROR_LIMIT = 2_000
"""The latest error is kept up to this many characters."""


def is_success(fact: DeliveryStatus) -> bool:
    return fact.status == Status.SUCCESSFUL and not fact.manual


def failure_error(fact: DeliveryStatus) -> str | None:
    """The error of a failed attempt, or None when ``fact`` is not a failure (see the module doc)."""
    if fact.status not in (Status.PENDING, Status.ERROR) or fact.manual:
        return None
    error = fact.error or (fact.attempt_record.error if fact.attempt_record else None)
    if not error or error == NOT_SENT_DISABLED:
        return None
    return error


def empty_row(destination_id: str, tenant: str) -> Row:
    return {
        "destination_id": destination_id,
        "tenant": tenant,
        "last_success_at": None,
        "last_failure_at": None,
        "failing_since": None,
        "last_error": None,
        "window_start": None,
        "successes": 0,
        "failures": 0,
    }


def _later(a: dt.datetime | None, b: dt.datetime) -> dt.datetime:
    return b if a is None or b > a else a


def merge_health(row: Row | None, fact: DeliveryStatus) -> Row:
    """The health row after ``fact`` (pure: ``row`` is not modified)."""
    out = dict(row) if row is not None else empty_row(fact.destination_id, fact.tenant)
    when = fact.occurred_at
    if is_success(fact):
        out["successes"] += 1
        out["last_success_at"] = _later(out["last_success_at"], when)
    else:
        error = failure_error(fact)
        if error is None:
            return out
        out["failures"] += 1
        if out["last_failure_at"] is None or when >= out["last_failure_at"]:
            out["last_error"] = error.replace("\x00", "\ufffd")[:ERROR_LIMIT]
        out["last_failure_at"] = _later(out["last_failure_at"], when)
        counts = out["window_start"] is None or when >= out["window_start"]
        after_success = out["last_success_at"] is None or when > out["last_success_at"]
        if counts and after_success and (out["failing_since"] is None or when < out["failing_since"]):
            out["failing_since"] = when
    success, failing = out["last_success_at"], out["failing_since"]
    if failing is not None and success is not None and success >= failing:
        last_failure = out["last_failure_at"]
        # A success after the failing period began: healthy, unless failures came after it (a late
        # success): then the latest failure stands for the first one after it.
        out["failing_since"] = last_failure if last_failure is not None and last_failure > success else None
    return out


def apply_facts(conn: Connection, facts: Sequence[DeliveryStatus]) -> None:
    """Merges ``facts`` into the health rows of their destinations, in the caller's transaction."""
    relevant = [f for f in facts if is_success(f) or failure_error(f) is not None]
    if not relevant:
        return
    ids = sorted({f.destination_id for f in relevant})
    before = {
        row["destination_id"]: dict(row)
        for row in conn.execute(
            sa.select(destination_health).where(destination_health.c.destination_id.in_(ids))
        ).mappings()
    }
    after = dict(before)
    for fact in relevant:
        after[fact.destination_id] = merge_health(after.get(fact.destination_id), fact)
    for destination_id, row in after.items():
        if destination_id in before:
            conn.execute(
                destination_health.update()
                .where(destination_health.c.destination_id == destination_id)
                .values({k: v for k, v in row.items() if k != "destination_id"})
            )
        else:
            conn.execute(destination_health.insert().values(row))


def apply_destination(
    conn: Connection, destination_id: str, previous_enabled: bool | None, destination: Destination | None
) -> None:
    """A destination change: deleted, its health goes; enabled again after being disabled, its
    failing period ends (see the module doc)."""
    table = destination_health
    if destination is None:
        conn.execute(table.delete().where(table.c.destination_id == destination_id))
        return
    if previous_enabled is False and destination.enabled:
        reset = {"window_start": destination.updated_at, "failing_since": None}
        if not conn.execute(
            table.update().where(table.c.destination_id == destination_id).values(reset)
        ).rowcount:
            conn.execute(table.insert().values({**empty_row(destination_id, destination.tenant), **reset}))
