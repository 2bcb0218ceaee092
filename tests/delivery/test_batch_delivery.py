"""The absync.v1 batch mode end to end: real broker, the delivery worker, the real http connector in
batch mode, the loopback receiver answering per item (tests/fakes/receiver.py).

The deliveries are produced before the worker starts, so its first poll hands them to the lanes
together and the micro-batcher (connectors/batching.py) sees them at once.
"""

from __future__ import annotations

import json

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from schemas.delivery import Delivery, Status
from schemas.models import ChangeKind
from streams.kafka import make_reader
from streams.settings import Settings
from streams.topics import Topics
from tests.delivery.harness import Feed, RunningWorker, StatusLog, change, http_destination
from tests.fakes.receiver import Receiver

pytestmark = pytest.mark.kafka

COUNT = 12


def retried_keys(settings: Settings) -> list[str]:
    """The keys of every record in the retry topics (what the worker scheduled for a retry)."""
    reader = make_reader(settings, **{"enable.partition.eof": True})
    topics = Topics(settings).retries
    assigned = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(settings.partitions)]
    reader.assign(assigned)
    keys: list[str] = []
    at_end: set[tuple[str, int]] = set()
    try:
        while len(at_end) < len(assigned):
            for msg in reader.consume(100, 1.0):
                error = msg.error()
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, str(error)
                    at_end.add((msg.topic() or "", msg.partition() or 0))
                    continue
                keys.append((msg.key() or b"").decode())
    finally:
        reader.close()
    return keys


def deliveries(prefix: str) -> list[Delivery]:
    return [change(f"{prefix}-{i}", 1, ChangeKind.APPROVED) for i in range(COUNT)]


def test_a_burst_goes_in_fewer_requests_than_changes(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    http_destination(settings, receiver.url + "/hook", batch_size=10)
    burst = deliveries("abs-burst")
    Feed(settings).deliveries(*burst)
    with RunningWorker(settings):
        statuses.wait(lambda log: all(log.latest(d.delivery_id) is Status.SUCCESSFUL for d in burst))

    assert sorted(receiver.state) == sorted(d.absence_id for d in burst)
    assert len(receiver.requests) < len(burst)
    assert all(r.outcome == "batch" for r in receiver.requests)
    for delivery in burst:  # each attempt shows its own item and its own result
        (event,) = [e for e in statuses.of(delivery.delivery_id) if e.status is Status.SUCCESSFUL]
        record = event.attempt_record
        assert record is not None and record.request_method == "POST"
        assert json.loads(record.request_body or "")["delivery_id"] == delivery.delivery_id
        assert json.loads(record.response_body or "")["id"] == delivery.delivery_id


def test_only_the_failed_item_is_retried_and_passes_on_its_retry(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    http_destination(settings, receiver.url + "/hook", batch_size=10)
    burst = deliveries("abs-part")
    failing = burst[3]
    receiver.fail_items_next(1, 500, absence_id=failing.absence_id, error="calendar busy")
    Feed(settings).deliveries(*burst)
    with RunningWorker(settings):
        statuses.wait(lambda log: all(log.latest(d.delivery_id) is Status.SUCCESSFUL for d in burst))

    pending, success = statuses.of(failing.delivery_id)
    assert (pending.status, pending.attempt, success.attempt) == (Status.PENDING, 1, 2)
    assert "calendar busy" in (pending.error or "")
    assert pending.attempt_record is not None and "500" in (pending.attempt_record.response_body or "")
    for delivery in burst:
        if delivery is not failing:
            assert [(e.status, e.attempt) for e in statuses.of(delivery.delivery_id)] == [
                (Status.SUCCESSFUL, 1)
            ]
    assert retried_keys(settings) == [failing.key]
    sent = [a for a, _, _ in receiver.batch_items]
    assert sent.count(failing.absence_id) == 2
    assert all(sent.count(d.absence_id) == 1 for d in burst if d is not failing)
    assert sorted(receiver.state) == sorted(d.absence_id for d in burst)


def test_a_whole_request_failure_retries_every_item_of_it(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    http_destination(settings, receiver.url + "/hook", batch_size=10)
    burst = deliveries("abs-whole")
    receiver.fail_next(1, 503, path="/hook")
    Feed(settings).deliveries(*burst)
    with RunningWorker(settings):
        statuses.wait(lambda log: all(log.latest(d.delivery_id) is Status.SUCCESSFUL for d in burst))

    failed_request = receiver.requests[0]
    assert failed_request.status == 503
    in_failed = {item["delivery_id"] for item in failed_request.json()["items"]}
    assert in_failed  # the first request's items, all of them retried
    for delivery in burst:
        attempts = [(e.status, e.attempt) for e in statuses.of(delivery.delivery_id)]
        if delivery.delivery_id in in_failed:
            assert attempts == [(Status.PENDING, 1), (Status.SUCCESSFUL, 2)]
        else:
            assert attempts == [(Status.SUCCESSFUL, 1)]
    assert sorted(retried_keys(settings)) == sorted(d.key for d in burst if d.delivery_id in in_failed)
    assert sorted(receiver.state) == sorted(d.absence_id for d in burst)
