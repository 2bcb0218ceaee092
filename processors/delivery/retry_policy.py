"""The retry policy: what follows a failed attempt, as a pure function of (error, delivery, settings).

:func:`next_step` reads no clock, topic or state of its own (the current time is an argument), so
the ladder can be read, and tested, in one place. The rules:

- a :class:`connectors.exceptions.RetryableError` (timeout, connection error, 5xx, rate limit) of an
  automatic attempt, while a stage is left, goes to the next stage: :class:`RetryAt` that stage's
  retry topic, due ``retry_delays[stage - 1]`` seconds from now, or later when the destination said
  so: a :class:`connectors.exceptions.BackpressureError`'s ``retry_after`` is a floor, never shortened;
- anything else is final, :class:`GiveUp` (the delivery is in ERROR): a
  :class:`connectors.exceptions.PermanentError` (4xx, misconfiguration), a failure on the last stage,
  an error that is neither retryable nor permanent, and any failure of an operator's Retry (a
  ``final`` delivery: one attempt, nothing scheduled after it).

A failed operator Retry leaves the automatic ladder as it was (an automatic retry already pending
still comes); any other final failure cancels what was pending for the delivery.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from connectors.exceptions import BackpressureError, ConnectorError, RetryableError
from schemas.delivery import Delivery
from streams.settings import Settings
from streams.topics import Topics


@dataclass(frozen=True)
class RetryAt:
    """Send the delivery again: written to ``topic`` (retry stage ``stage``), not before ``due_at``."""

    stage: int
    """1 for the first retry topic, up to ``len(settings.retry_delays)``."""
    topic: str
    due_at: dt.datetime


@dataclass(frozen=True)
class GiveUp:
    """No further automatic attempt: the delivery is in ERROR (an operator may still Retry)."""

    keeps_pending_retry: bool
    """True for a failed operator Retry: an automatic retry already pending for the delivery stays
    expected. False: nothing is pending any more."""


NextStep = RetryAt | GiveUp


def next_step(error: ConnectorError, delivery: Delivery, settings: Settings, *, now: dt.datetime) -> NextStep:
    """What follows ``delivery``'s attempt that failed with ``error`` at ``now`` (see the module)."""
    stage = delivery.stage + 1
    if isinstance(error, RetryableError) and not delivery.final and stage <= len(settings.retry_delays):
        due = now + dt.timedelta(seconds=settings.retry_delays[stage - 1])
        if isinstance(error, BackpressureError) and error.retry_after is not None:
            due = max(due, now + dt.timedelta(seconds=error.retry_after))
        return RetryAt(stage, Topics(settings).retries[stage - 1], due)
    return GiveUp(keeps_pending_retry=delivery.final)
