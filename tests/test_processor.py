"""The exactly-once runtime and the state store on a real broker, with a small counting processor:
per key, the n-th record comes out as ``value:n``."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from confluent_kafka import Message, TopicPartition
from confluent_kafka.cimpl import NewTopic

from streams.kafka import make_admin, make_producer
from streams.processor import Output, Processor, ProcessorRuntime
from streams.settings import Settings
from streams.state import StateStore
from tests.streams_helpers import at_least, headers_of, read_committed, read_to_end

OVERSIZED = os.urandom(5000)
"""More than the ``small`` topic accepts, even compressed: the broker rejects it, the transaction aborts."""


class Counter(Processor):
    name = "counter"

    def __init__(self, settings: Settings) -> None:
        p = settings.topic_prefix
        self.topics = [f"{p}in"]
        self.out, self.dead, self.small = f"{p}out", f"{p}dead", f"{p}small"
        self.state = StateStore(settings, f"{p}counts")
        self.stores = [self.state]
        self.tried_oversized: set[bytes] = set()
        self.assigned: list[int] = []

    def handle(self, msg: Message) -> list[Output]:
        key, value, partition = (msg.key() or b"").decode(), msg.value() or b"", msg.partition() or 0
        count = int(self.state.get(partition, key) or b"0") + 1
        self.state.put(partition, key, str(count).encode())
        if value == b"boom":
            raise ValueError("boom is not a number")  # after a put: the runtime must roll it back
        outputs = [Output(self.out, msg.key(), value + b":" + str(count).encode())]
        if value.startswith(b"abort-once") and value not in self.tried_oversized:
            self.tried_oversized.add(value)
            outputs.append(Output(self.small, msg.key(), OVERSIZED))
        if value.startswith(b"refused"):  # refused by the broker on every attempt
            outputs.append(Output(self.small, msg.key(), OVERSIZED))
        return outputs

    def dead_letter(self, msg: Message, exc: Exception) -> list[Output]:
        if msg.value() == b"refused-dead-letter-too":
            return [Output(self.small, msg.key(), OVERSIZED)]
        return [Output(self.dead, msg.key(), msg.value(), [("error", str(exc).encode())])]

    def on_assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = sorted(self.state.partitions())


@pytest.fixture(params=["memory", "disk"])
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The store tests run on both state backends (ABSYNC_STATE_BACKEND)."""
    return settings.model_copy(update={"state_backend": request.param})


def create(settings: Settings) -> None:
    p, n = settings.topic_prefix, settings.partitions
    topics = [NewTopic(f"{p}{name}", n, 1) for name in ("in", "out", "dead")]
    topics.append(NewTopic(f"{p}counts", n, 1, config={"cleanup.policy": "compact"}))
    topics.append(NewTopic(f"{p}small", 1, 1, config={"max.message.bytes": "2000"}))
    admin = make_admin(settings)
    for future in admin.create_topics(topics).values():
        future.result()


def send(settings: Settings, records: list[tuple[str, str]]) -> None:
    producer = make_producer(settings)
    for key, value in records:
        producer.produce(f"{settings.topic_prefix}in", key=key.encode(), value=value.encode())
    assert producer.flush(30) == 0


@contextmanager
def running(settings: Settings, worker_id: str) -> Iterator[Counter]:
    processor = Counter(settings)
    runtime = ProcessorRuntime(settings, processor, worker_id=worker_id, retry_backoff=0.1)
    stop = threading.Event()
    thread = threading.Thread(target=runtime.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield processor
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()


def outputs(settings: Settings, count: int) -> list[tuple[str, str]]:
    records = read_committed(settings, f"{settings.topic_prefix}out", at_least(count))
    return sorted(((m.key() or b"").decode(), (m.value() or b"").decode()) for m in records)


def test_failures_aborts_and_restarts_keep_outputs_and_state_exact(settings: Settings) -> None:
    create(settings)
    with running(settings, "a") as first:
        send(settings, [("k1", "a"), ("k1", "boom"), ("k1", "b"), ("k2", "abort-once-1"), ("k2", "c")])
        got = outputs(settings, 4)
        dead = read_committed(settings, f"{settings.topic_prefix}dead", at_least(1))
    assert first.assigned == [0, 1, 2]
    assert b"abort-once-1" in first.tried_oversized  # the oversized output was tried, then aborted
    # The failed record's count was rolled back; the aborted batch was processed again, once.
    assert got == [("k1", "a:1"), ("k1", "b:2"), ("k2", "abort-once-1:1"), ("k2", "c:2")]
    assert [(m.value(), headers_of(m)["error"]) for m in dead] == [(b"boom", b"boom is not a number")]
    assert read_to_end(settings, f"{settings.topic_prefix}small") == []

    # A new worker restores the counts from the changelog and goes on from them.
    with running(settings, "b"):
        send(settings, [("k1", "d"), ("k2", "e")])
        got = outputs(settings, 6)
    assert got == sorted(
        [("k1", "a:1"), ("k1", "b:2"), ("k1", "d:3"), ("k2", "abort-once-1:1"), ("k2", "c:2"), ("k2", "e:3")]
    )


def test_a_record_whose_output_the_broker_always_refuses_is_dead_lettered_and_stalls_nothing(
    settings: Settings,
) -> None:
    """A topic whose max.message.bytes is below ABSYNC_MAX_RECORD_BYTES refuses an output on every
    attempt: its record is dead-lettered after REFUSED_ATTEMPTS (or skipped if its dead letter is
    refused too), its neighbours in the same batches are handled exactly once, the loop goes on."""
    create(settings)
    with running(settings, "a"):
        send(
            settings,
            [("k1", "a"), ("k1", "refused-1"), ("k1", "b"), ("k2", "refused-dead-letter-too"), ("k2", "c")],
        )
        got = outputs(settings, 3)
        dead = read_committed(settings, f"{settings.topic_prefix}dead", at_least(1))
        send(settings, [("k1", "d"), ("k2", "e")])
        got = outputs(settings, 5)
    # The refused records' counts never committed: each attempt was aborted, the dead letter came
    # before handle.
    assert got == [("k1", "a:1"), ("k1", "b:2"), ("k1", "d:3"), ("k2", "c:1"), ("k2", "e:2")]
    assert [m.value() for m in dead] == [b"refused-1"]
    assert headers_of(dead[0])["error"].startswith(b"the broker refused an output of this record 3 times")
    assert read_to_end(settings, f"{settings.topic_prefix}small") == []
    assert len(read_to_end(settings, f"{settings.topic_prefix}dead")) == 1


def test_the_watchdog_fires_when_the_loop_stops_beating_and_not_while_it_beats() -> None:
    import threading
    import time

    from streams.processor import StallWatchdog

    fired = threading.Event()
    watchdog = StallWatchdog("test", limit=1.5, on_stall=fired.set).start()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # a healthy loop beats: no stall
        watchdog.beat()
        time.sleep(0.05)
    assert not fired.is_set()
    assert fired.wait(10), "a loop that stopped beating must be reported as stalled"
    watchdog.stop()
