"""Convergence (never replay a stale operation) and pauses that survive a restart."""

from __future__ import annotations

import pytest

from schemas.delivery import Status
from schemas.models import ChangeKind
from streams.settings import Settings
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

pytestmark = pytest.mark.kafka


def test_a_create_waiting_for_retry_is_superseded_by_a_later_delete(
    slow_settings: Settings, receiver: Receiver
) -> None:
    http_destination(slow_settings, receiver.url + "/hook")
    statuses = StatusLog(slow_settings)
    create = change("abs-conv", 1, ChangeKind.CREATED)
    delete = change("abs-conv", 2, ChangeKind.DELETED)
    receiver.fail_next(1, 500, absence_id="abs-conv")
    feed = Feed(slow_settings)
    with RunningWorker(slow_settings):
        feed.deliveries(create)
        pending = statuses.wait_status(create.delivery_id, Status.PENDING)
        feed.deliveries(delete)
        statuses.wait_status(delete.delivery_id, Status.SUCCESSFUL)
        statuses.wait_status(create.delivery_id, Status.SUPERSEDED)
        wait_consumed(slow_settings, feed.topics.retries[0])  # the create's retry came due and was dropped
        statuses.poll()
    statuses.close()

    assert pending.next_retry_at is not None
    assert [e.status for e in statuses.of(create.delivery_id)] == [Status.PENDING, Status.SUPERSEDED]
    assert [e.status for e in statuses.of(delete.delivery_id)] == [Status.SUCCESSFUL]
    assert receiver.state == {}
    assert [r.method for r in requests_for(receiver, "abs-conv")] == ["PUT", "DELETE"]


def test_a_newer_version_is_sent_and_an_older_one_arriving_late_is_superseded(
    settings: Settings, receiver: Receiver
) -> None:
    http_destination(settings, receiver.url + "/hook")
    statuses = StatusLog(settings)
    newer = change("abs-order", 3, ChangeKind.UPDATED)
    older = change("abs-order", 2, ChangeKind.APPROVED)
    with RunningWorker(settings):
        Feed(settings).deliveries(newer, older)
        statuses.wait_status(older.delivery_id, Status.SUPERSEDED)
        statuses.wait_status(newer.delivery_id, Status.SUCCESSFUL)
    statuses.close()

    assert receiver.state["abs-order"]["version"] == 3
    assert len(requests_for(receiver, "abs-order")) == 1


def test_paused_retries_survive_a_restart(slow_settings: Settings, receiver: Receiver) -> None:
    """Stop the worker while records wait in a delay topic: the next worker sends them when due."""
    http_destination(slow_settings, receiver.url + "/hook")
    statuses = StatusLog(slow_settings)
    deliveries = [change(f"abs-restart-{i}", 1, ChangeKind.APPROVED) for i in range(12)]
    for delivery in deliveries:
        receiver.fail_next(1, 502, absence_id=delivery.absence_id)
    with RunningWorker(slow_settings):
        Feed(slow_settings).deliveries(*deliveries)
        statuses.wait(lambda log: all(log.of(d.delivery_id) for d in deliveries))
    assert receiver.state == {}, "nothing may be sent before the first retry stage is due"

    with RunningWorker(slow_settings):
        assert receiver.wait_until(lambda r: len(r.state) == len(deliveries), timeout=60)
        statuses.wait(lambda log: all(log.latest(d.delivery_id) is Status.SUCCESSFUL for d in deliveries))
    statuses.close()

    for delivery in deliveries:
        pending = statuses.of(delivery.delivery_id)[0]
        assert pending.status is Status.PENDING and pending.next_retry_at is not None
        first, retry = requests_for(receiver, delivery.absence_id)
        assert first.status == 502
        assert retry.arrived_at >= pending.next_retry_at
