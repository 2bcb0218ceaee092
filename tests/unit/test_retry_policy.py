"""The retry policy (:func:`processors.delivery.retry_policy.next_step`) as a table, no broker: which
failures climb the ladder, where to, due when, and which end it."""

from __future__ import annotations

import datetime as dt

import pytest

from connectors.exceptions import (
    BackpressureError,
    ConfigurationError,
    ConnectorError,
    PermanentError,
    RetryableError,
)
from processors.delivery.retry_policy import GiveUp, RetryAt, next_step
from schemas.delivery import Delivery, Trigger
from streams.settings import Settings
from streams.topics import Topics
from tests.connectors.deliveries import make_delivery

NOW = dt.datetime(2026, 3, 30, 9, 0, tzinfo=dt.UTC)
DELAYS = (300.0, 900.0, 3600.0, 86400.0)
SETTINGS = Settings(topic_prefix="unit.", retry_delays=DELAYS)  # type: ignore[call-arg]
RETRIES = Topics(SETTINGS).retries


def delivery(stage: int = 0, *, final: bool = False) -> Delivery:
    d = make_delivery().evolve(stage=stage)
    return d.evolve(trigger=Trigger.RETRY, final=True) if final else d


RETRYABLE = [
    RetryableError("timeout"),
    RetryableError("502 Bad Gateway", status_code=502),
    BackpressureError("429 without Retry-After", status_code=429),
]
FINAL = [
    PermanentError("404 no mailbox for jane@acme.com", status_code=404),
    ConfigurationError("missing client secret"),
    ConnectorError("neither retryable nor permanent"),
]


@pytest.mark.parametrize("error", RETRYABLE, ids=lambda e: e.message)
@pytest.mark.parametrize("stage", range(len(DELAYS)), ids=lambda s: f"from-stage-{s}")
def test_a_retryable_failure_goes_to_the_next_stage_after_its_delay(
    error: ConnectorError, stage: int
) -> None:
    step = next_step(error, delivery(stage), SETTINGS, now=NOW)

    assert step == RetryAt(stage + 1, RETRIES[stage], NOW + dt.timedelta(seconds=DELAYS[stage]))


@pytest.mark.parametrize("error", RETRYABLE, ids=lambda e: e.message)
def test_a_retryable_failure_on_the_last_stage_is_an_error(error: ConnectorError) -> None:
    step = next_step(error, delivery(len(DELAYS)), SETTINGS, now=NOW)

    assert step == GiveUp(keeps_pending_retry=False)


@pytest.mark.parametrize("error", FINAL, ids=lambda e: e.message)
@pytest.mark.parametrize("stage", range(len(DELAYS) + 1), ids=lambda s: f"stage-{s}")
def test_a_failure_that_retrying_cannot_help_is_an_error_at_once(error: ConnectorError, stage: int) -> None:
    step = next_step(error, delivery(stage), SETTINGS, now=NOW)

    assert step == GiveUp(keeps_pending_retry=False)


@pytest.mark.parametrize(
    ("stage", "retry_after", "due_after"),
    [
        (0, 301.0, 301.0),  # just over the first delay (300 s): the destination's floor
        (0, 7200.0, 7200.0),  # far over it
        (0, 60.0, 300.0),  # under it: the stage delay stands, never earlier
        (2, 86400.0 * 2, 86400.0 * 2),  # stage 3's hour is overruled by a two-day Retry-After
        (2, 0.0, 3600.0),
    ],
)
def test_retry_after_is_a_floor_on_the_stage_delay(stage: int, retry_after: float, due_after: float) -> None:
    error = BackpressureError("429", retry_after=retry_after, status_code=429)

    step = next_step(error, delivery(stage), SETTINGS, now=NOW)

    assert step == RetryAt(stage + 1, RETRIES[stage], NOW + dt.timedelta(seconds=due_after))


def test_retry_after_does_not_extend_the_ladder_past_its_last_stage() -> None:
    error = BackpressureError("503", retry_after=30.0, status_code=503)

    assert next_step(error, delivery(len(DELAYS)), SETTINGS, now=NOW) == GiveUp(keeps_pending_retry=False)


@pytest.mark.parametrize("error", RETRYABLE + FINAL, ids=lambda e: e.message)
@pytest.mark.parametrize("stage", [0, 2, len(DELAYS)], ids=lambda s: f"stage-{s}")
def test_a_failed_operator_retry_schedules_nothing_and_leaves_the_ladder_as_it_was(
    error: ConnectorError, stage: int
) -> None:
    step = next_step(error, delivery(stage, final=True), SETTINGS, now=NOW)

    assert step == GiveUp(keeps_pending_retry=True)


def test_the_ladder_follows_the_configured_delays() -> None:
    short = Settings(topic_prefix="unit.", retry_delays="1s,2m")  # type: ignore[call-arg]
    error = RetryableError("timeout")

    first = next_step(error, delivery(0), short, now=NOW)
    second = next_step(error, delivery(1), short, now=NOW)
    third = next_step(error, delivery(2), short, now=NOW)

    assert first == RetryAt(1, Topics(short).retries[0], NOW + dt.timedelta(seconds=1))
    assert second == RetryAt(2, Topics(short).retries[1], NOW + dt.timedelta(minutes=2))
    assert third == GiveUp(keeps_pending_retry=False)
