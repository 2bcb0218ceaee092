"""Background topics of the exactly-once runtime, on a real broker: a record of a live topic is not
queued behind a backlog of bulk ones (the fan-out's resync requests), and deferring bulk records to
later batches, aborts included, loses and repeats none."""

from __future__ import annotations

import os
import threading
import time

import pytest
from confluent_kafka import Message
from confluent_kafka.cimpl import NewTopic

from streams.kafka import make_admin, make_producer
from streams.processor import BACKGROUND_PER_BATCH, Output, Processor, ProcessorRuntime
from streams.settings import Settings
from tests.streams_helpers import READ_LIMIT, at_least, read_committed, read_to_end

pytestmark = pytest.mark.kafka

BACKLOG = 4000
"""Bulk records waiting when the live one comes: forty batches' worth."""
OVERSIZED = os.urandom(5000)
"""More than the ``small`` topic accepts, even compressed: the broker refuses it, the transaction aborts."""


class TwoLanes(Processor):
    name = "two-lanes"

    def __init__(self, settings: Settings) -> None:
        p = settings.topic_prefix
        self.live, self.bulk = f"{p}live", f"{p}bulk"
        self.topics = [self.live, self.bulk]
        self.background_topics = [self.bulk]
        self.out, self.small = f"{p}out", f"{p}small"
        self.handled: list[tuple[str, bytes]] = []
        """(topic, value) in the order handled, aborted attempts included."""
        self.aborted_once = False
        self.lock = threading.Lock()

    def handle(self, msg: Message) -> list[Output]:
        value = msg.value() or b""
        with self.lock:
            self.handled.append((msg.topic() or "", value))
        if msg.topic() == self.bulk:
            time.sleep(0.001)  # bulk work takes a while: 4 s of backlog
        outputs = [Output(self.out, msg.key(), value)]
        if value == b"bulk-1500" and not self.aborted_once:
            self.aborted_once = True
            outputs.append(Output(self.small, msg.key(), OVERSIZED))
        return outputs

    def bulk_handled(self) -> int:
        with self.lock:
            return sum(1 for topic, _ in self.handled if topic == self.bulk)


def _create(settings: Settings) -> None:
    p, n = settings.topic_prefix, settings.partitions
    topics = [NewTopic(f"{p}{name}", n, 1) for name in ("live", "bulk", "out")]
    topics.append(NewTopic(f"{p}small", 1, 1, config={"max.message.bytes": "2000"}))
    admin = make_admin(settings)  # kept while the futures resolve
    for future in admin.create_topics(topics).values():
        future.result()


def _produce(settings: Settings, topic: str, values: list[bytes]) -> None:
    producer = make_producer(settings)
    for i, value in enumerate(values):
        producer.produce(topic, key=f"k{i % 50}".encode(), value=value)
    assert producer.flush(30) == 0


def test_a_live_record_overtakes_a_bulk_backlog_and_no_bulk_record_is_lost_or_repeated(
    settings: Settings,
) -> None:
    _create(settings)
    processor = TwoLanes(settings)
    _produce(settings, processor.bulk, [f"bulk-{i}".encode() for i in range(BACKLOG)])
    runtime = ProcessorRuntime(settings, processor, worker_id="lanes", retry_backoff=0.1)
    stop = threading.Event()
    thread = threading.Thread(target=runtime.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + READ_LIMIT
        while processor.bulk_handled() < 2 * BACKGROUND_PER_BATCH:
            assert time.monotonic() < deadline, "the bulk backlog was not taken up"
            time.sleep(0.01)
        before = processor.bulk_handled()
        _produce(settings, processor.live, [b"live-1"])
        while (processor.live, b"live-1") not in processor.handled:
            assert time.monotonic() < deadline, "the live record was never handled"
            time.sleep(0.01)
        overtaken = processor.bulk_handled() - before
        out = read_committed(settings, processor.out, at_least(BACKLOG + 1))
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    # Handled within a few batches of its arrival, while most of the backlog was still waiting (in
    # librdkafka's queue by default: every bulk record fetched ahead of it would come first).
    assert overtaken < BACKLOG // 2, f"{overtaken} bulk records were handled before the live one"
    # Exactly once: every record's output committed once, the aborted batch's outputs not at all.
    values = sorted((m.value() or b"") for m in out)
    assert values == sorted([b"live-1", *(f"bulk-{i}".encode() for i in range(BACKLOG))])
    assert processor.aborted_once
    assert read_to_end(settings, processor.small) == []
