"""Operator commands on the commands topic: Retry and Mark as processed, end to end."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer

from schemas.delivery import CommandKind, Status
from schemas.models import ChangeKind
from streams.kafka import connection_config
from streams.settings import Settings
from streams.topics import Topics
from tests.delivery.harness import (
    Feed,
    RunningWorker,
    StatusLog,
    change,
    http_destination,
    requests_for,
    wait_consumed,
)
from tests.fakes.receiver import Receiver
from tests.streams_helpers import watermarks

pytestmark = pytest.mark.kafka


def retry_records(settings: Settings) -> int:
    """How many records the retry topics hold (all partitions)."""
    consumer = Consumer({**connection_config(settings), "group.id": "tests-watermarks"})
    try:
        return sum(
            watermarks(consumer, topic, p)[1]
            for topic in Topics(settings).retries
            for p in range(settings.partitions)
        )
    finally:
        consumer.close()


def test_retry_after_a_permanent_error_delivers(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    http_destination(settings, receiver.url + "/hook")
    delivery = change("abs-retry", 1, ChangeKind.APPROVED)
    receiver.fail_next(1, 422, absence_id="abs-retry")
    feed = Feed(settings)
    with RunningWorker(settings):
        feed.deliveries(delivery)
        statuses.wait_status(delivery.delivery_id, Status.ERROR)
        feed.command(CommandKind.RETRY, delivery)
        success = statuses.wait_status(delivery.delivery_id, Status.SUCCESSFUL)

    assert success.trigger == "retry"
    assert success.attempt == 2
    assert not success.manual
    assert receiver.state["abs-retry"]["version"] == 1


def test_a_failing_retry_schedules_nothing(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    http_destination(settings, receiver.url + "/hook")
    delivery = change("abs-retry-fails", 1, ChangeKind.APPROVED)
    receiver.fail_next(1, 400, absence_id="abs-retry-fails")
    receiver.fail_next(1, 500, absence_id="abs-retry-fails")
    feed = Feed(settings)
    with RunningWorker(settings):
        feed.deliveries(delivery)
        statuses.wait_status(delivery.delivery_id, Status.ERROR)
        feed.command(CommandKind.RETRY, delivery)
        statuses.wait(lambda log: len(log.of(delivery.delivery_id)) == 2)
        wait_consumed(settings, feed.topics.commands)

    first, retried = statuses.of(delivery.delivery_id)
    assert (first.status, first.attempt, first.trigger) == (Status.ERROR, 1, "automatic")
    assert (retried.status, retried.attempt, retried.trigger) == (Status.ERROR, 2, "retry")
    assert retried.next_retry_at is None
    assert retry_records(settings) == 0
    assert len(requests_for(receiver, "abs-retry-fails")) == 2


def test_retry_sends_the_latest_state_of_the_absence(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    http_destination(settings, receiver.url + "/hook")
    created = change("abs-latest", 1, ChangeKind.CREATED)
    updated = change("abs-latest", 2, ChangeKind.UPDATED)
    receiver.fail_next(2, 400, absence_id="abs-latest")
    feed = Feed(settings)
    with RunningWorker(settings):
        feed.deliveries(created, updated)
        statuses.wait_status(updated.delivery_id, Status.ERROR)
        feed.command(CommandKind.RETRY, created)
        statuses.wait_status(updated.delivery_id, Status.SUCCESSFUL)

    assert statuses.latest(created.delivery_id) is Status.SUPERSEDED
    assert receiver.state["abs-latest"]["version"] == 2


def test_mark_as_processed_cancels_the_pending_retries(
    slow_settings: Settings, receiver: Receiver, slow_statuses: StatusLog
) -> None:
    http_destination(slow_settings, receiver.url + "/hook")
    delivery = change("abs-mark", 1, ChangeKind.APPROVED)
    receiver.fail_next(1000, 500, absence_id="abs-mark")
    feed = Feed(slow_settings)
    with RunningWorker(slow_settings):
        feed.deliveries(delivery)
        slow_statuses.wait_status(delivery.delivery_id, Status.PENDING)
        feed.command(CommandKind.MARK_PROCESSED, delivery)
        manual = slow_statuses.wait_status(delivery.delivery_id, Status.SUCCESSFUL)
        wait_consumed(slow_settings, feed.topics.retries[0])  # the pending retry came due and was dropped
        slow_statuses.poll()

    assert manual.manual
    assert [e.status for e in slow_statuses.of(delivery.delivery_id)] == [Status.PENDING, Status.SUCCESSFUL]
    assert retry_records(slow_settings) == 1
    assert len(requests_for(receiver, "abs-mark")) == 1
