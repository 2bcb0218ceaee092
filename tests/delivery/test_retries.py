"""The retry ladder, end to end: real broker, real http connector, real receiver on loopback.

Delays are shrunk by the ``settings`` fixture (1s,2s,3s,4s); the connector timeout is 2 s.
"""

from __future__ import annotations

import datetime as dt
import random

import pytest

from schemas.delivery import Status
from schemas.models import ChangeKind
from streams.settings import Settings
from tests.delivery.harness import Feed, RunningWorker, StatusLog, change, http_destination, requests_for
from tests.fakes.receiver import Receiver

pytestmark = pytest.mark.kafka


def test_500_then_success_on_the_second_retry_stage(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    http_destination(settings, receiver.url + "/hook")
    delivery = change("abs-ladder", 1, ChangeKind.APPROVED)
    receiver.fail_next(2, 500, absence_id="abs-ladder")
    with RunningWorker(settings):
        Feed(settings).deliveries(delivery)
        final = statuses.wait_settled(delivery.delivery_id)

    events = statuses.of(delivery.delivery_id)
    assert [(e.status, e.attempt) for e in events] == [
        (Status.PENDING, 1),
        (Status.PENDING, 2),
        (Status.SUCCESSFUL, 3),
    ]
    assert final.attempt_record is not None and final.attempt_record.response_status in (200, 201)
    assert events[0].attempt_record is not None and events[0].attempt_record.response_status == 500
    assert "500" in (events[0].error or "")
    assert receiver.state["abs-ladder"]["version"] == 1
    # each retry went out no earlier than the time its PENDING status announced
    calls = requests_for(receiver, "abs-ladder")
    assert len(calls) == 3
    for pending, call in zip(events[:2], calls[1:], strict=True):
        assert pending.next_retry_at is not None
        assert call.arrived_at >= pending.next_retry_at


def test_every_stage_failing_ends_in_error_after_one_plus_stages_attempts(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    http_destination(settings, receiver.url + "/hook")
    delivery = change("abs-down", 1, ChangeKind.CREATED)
    receiver.fail_next(1000, 503, absence_id="abs-down")
    with RunningWorker(settings):
        Feed(settings).deliveries(delivery)
        final = statuses.wait_settled(delivery.delivery_id)

    stages = len(settings.retry_delays)
    assert final.status is Status.ERROR
    assert final.attempt == 1 + stages
    assert [e.status for e in statuses.of(delivery.delivery_id)] == [Status.PENDING] * stages + [Status.ERROR]
    assert len(requests_for(receiver, "abs-down")) == 1 + stages
    assert "abs-down" not in receiver.state


def test_a_permanent_failure_is_an_error_at_once(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    http_destination(settings, receiver.url + "/hook")
    delivery = change("abs-bad", 1, ChangeKind.CREATED)
    receiver.fail_next(1, 400, absence_id="abs-bad")
    with RunningWorker(settings):
        Feed(settings).deliveries(delivery)
        final = statuses.wait_settled(delivery.delivery_id)

    assert [(e.status, e.attempt) for e in statuses.of(delivery.delivery_id)] == [(Status.ERROR, 1)]
    assert final.attempt_record is not None and final.attempt_record.response_status == 400
    assert final.next_retry_at is None
    assert len(requests_for(receiver, "abs-bad")) == 1


def test_retry_after_is_honoured(settings: Settings, receiver: Receiver, statuses: StatusLog) -> None:
    """The first stage waits 1 s, the receiver asks for 3 s: the retry comes no earlier than 3 s."""
    http_destination(settings, receiver.url + "/hook")
    delivery = change("abs-429", 1, ChangeKind.APPROVED)
    receiver.throttle_next(1, retry_after=3, absence_id="abs-429")
    with RunningWorker(settings):
        Feed(settings).deliveries(delivery)
        statuses.wait_status(delivery.delivery_id, Status.SUCCESSFUL)

    pending, success = statuses.of(delivery.delivery_id)
    assert pending.status is Status.PENDING and pending.attempt_record is not None
    assert pending.attempt_record.response_status == 429
    assert pending.next_retry_at is not None
    assert pending.next_retry_at >= pending.attempt_record.started_at + dt.timedelta(seconds=3)
    first, second = requests_for(receiver, "abs-429")
    assert second.arrived_at >= first.arrived_at + dt.timedelta(seconds=3)
    assert success.attempt == 2


def test_a_delayed_record_is_never_processed_before_its_due_time(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    """Records written straight into a retry topic, due times shuffled within each partition."""
    http_destination(settings, receiver.url + "/hook")
    feed = Feed(settings)
    now = dt.datetime.now(dt.UTC)
    rng = random.Random(7)
    delayed = []
    for i in range(120):
        due = now + dt.timedelta(milliseconds=rng.randint(500, 4000))
        delivery = change(f"abs-due-{i}", 1, ChangeKind.APPROVED).evolve(due_at=due, attempt=1)
        stage = 1 + i % len(settings.retry_delays)
        feed.delayed(delivery, stage, partition=i % settings.partitions)
        delayed.append(delivery)
    feed.flush()
    with RunningWorker(settings):
        assert receiver.wait_until(lambda r: len(r.state) == len(delayed), timeout=90)

    for delivery in delayed:
        (call,) = requests_for(receiver, delivery.absence_id)
        assert call.arrived_at >= delivery.due_at, f"{delivery.absence_id} processed before it was due"
