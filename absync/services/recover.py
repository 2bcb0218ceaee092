"""Recover: re-send every delivery of one destination that failed (status Error) since a given
time, as Svix's *recover* does. The same operation as ``absync replay-failed``; the API and the
console run it as a tracked job (:mod:`absync.web.recover_jobs`), the CLI in the foreground.

Guarantees:

- Exactly the deliveries of the destination whose projected status is Error and whose status
  changed at or after ``since`` are considered; successful ones and failures older than ``since``
  are never re-sent.
- The re-sends go through the normal path: one RETRY ``Command`` per delivery on the replay lane
  (``deliveries.replay``, :func:`processors.replay_failed.replay_failed`), so the worker makes one
  attempt of the key's latest delivery, with its idempotency key and in the key's order, when live
  work leaves it room.
- At most one re-send per absence: a second delivery in Error of the same absence would only make
  the worker re-send the same latest state again; it is skipped (reason ``same_absence``).
- Bounded: at most ``limit`` deliveries per run; the newer ones (the list is read newest first)
  are taken and the rest counted as skipped (reason ``over_limit``): run it again to continue.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from processors.replay_failed import FailedDelivery, replay_failed
from processors.resync_io import DEFAULT_RATE
from projections import queries
from projections.queries.base import Bind
from schemas.delivery import Status
from streams.settings import Settings

MAX_DELIVERIES = 10_000
"""Deliveries re-sent at most by one Recover (one run of ``replay-failed``)."""

SAME_ABSENCE = "same_absence"
OVER_LIMIT = "over_limit"
STOPPED = "stopped"
SKIP_REASONS = {
    SAME_ABSENCE: "another delivery of the same absence is re-sent (the worker re-sends its latest state)",
    OVER_LIMIT: f"over the limit of {MAX_DELIVERIES:,} deliveries per Recover: run it again to continue",
    STOPPED: "the job stopped before sending them (the process stopped)",
}


def failed_since(bind: Bind, destination_id: str, since: dt.datetime) -> Iterator[FailedDelivery]:
    """The destination's deliveries in Error whose status changed at or after ``since``, newest
    first (the view's keyset order: pages stop at the first older row)."""
    cursor: str | None = None
    while True:
        page = queries.list_deliveries(
            bind,
            tenant=None,
            status=Status.ERROR.value,
            destination_id=destination_id,
            cursor=cursor,
            limit=queries.MAX_LIMIT,
        )
        for row in page.items:
            if row.updated_at < since:
                return
            yield FailedDelivery(row.delivery_id, row.destination_id, row.absence_id, row.tenant)
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def audit(bind: Bind, *, destination_id: str, tenant: str, actor: str, since: dt.datetime) -> None:
    """Records who started a Recover of which destination, since when (action ``recover``)."""
    queries.record_audit(
        bind,
        destination_id=destination_id,
        tenant=tenant,
        actor=actor,
        action="recover",
        changes={"since": since.isoformat()},
    )


@dataclass
class RecoverPlan:
    """What one Recover re-sends, and what it skips with the reason."""

    to_send: list[FailedDelivery] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count


def plan(failed: Iterator[FailedDelivery], limit: int = MAX_DELIVERIES) -> RecoverPlan:
    """One delivery per absence, at most ``limit`` (the first ones of ``failed``); the rest of
    ``failed`` is read to count what is skipped."""
    result = RecoverPlan()
    seen: set[tuple[str, str]] = set()
    for delivery in failed:
        key = (delivery.tenant, delivery.absence_id)
        if key in seen:
            result.skip(SAME_ABSENCE)
        elif len(result.to_send) >= limit:
            result.skip(OVER_LIMIT)
        else:
            seen.add(key)
            result.to_send.append(delivery)
    return result


@dataclass
class RecoverProgress:
    """Where a Recover is: ``total`` to re-send (known once listed), ``sent`` so far, ``skipped``
    by reason."""

    phase: Literal["listing", "sending", "done"] = "listing"
    total: int = 0
    sent: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    completed: bool = False


def recover(
    settings: Settings,
    bind: Bind,
    destination_id: str,
    since: dt.datetime,
    *,
    issued_by: str,
    rate: float = DEFAULT_RATE,
    limit: int = MAX_DELIVERIES,
    stop: threading.Event | None = None,
    progress: Callable[[RecoverProgress], None] | None = None,
) -> RecoverProgress:
    """Re-sends the destination's deliveries in Error since ``since``, read from the projection
    through ``bind`` (see the module docstring); ``progress`` is called after the listing and
    after each command sent."""
    report = progress or (lambda _: None)
    state = RecoverProgress()
    report(state)
    chosen = plan(failed_since(bind, destination_id, since), limit)
    state.phase, state.total, state.skipped = "sending", len(chosen.to_send), dict(chosen.skipped)
    report(state)

    def sent(count: int) -> None:
        state.sent = count
        report(state)

    state.sent = replay_failed(
        settings, chosen.to_send, issued_by=issued_by, rate=rate, stop=stop, progress=sent
    )
    if state.sent < state.total:
        state.skipped[STOPPED] = state.total - state.sent
    state.phase, state.completed = "done", state.sent == state.total
    report(state)
    return state
