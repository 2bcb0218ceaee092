"""Helpers for tests of the processors on a real broker: events, raw produce, committed reads, a
fan-out worker in a thread."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from processors.fanout import FanoutProcessor
from schemas.codec import codec_for
from schemas.delivery import Delivery, DeliveryStatus
from schemas.destination import Destination, Filters
from schemas.models import Absence, AbsenceEvent, AbsenceStatus, ChangeKind, Employee, HalfDay, LeaveAccount
from streams.destinations import DestinationTable, publish_destination
from streams.kafka import connection_config, make_producer
from streams.kafka import watermarks as kafka_watermarks
from streams.processor import ProcessorRuntime
from streams.settings import Settings
from streams.topics import Topics

READ_LIMIT = 90.0
"""Seconds a read waits for what it expects before giving up (a bound, not an assertion)."""


def watermarks(consumer: Consumer, topic: str, partition: int, timeout: float = 30.0) -> tuple[int, int]:
    """(low, high) offsets of a partition (:func:`streams.kafka.watermarks`: asked again while a
    just-created topic has no leader yet, at most ``timeout`` s)."""
    return kafka_watermarks(consumer, TopicPartition(topic, partition), timeout)


def make_event(
    absence_id: str | None = None,
    *,
    version: int = 1,
    change: ChangeKind = ChangeKind.CREATED,
    status: AbsenceStatus = AbsenceStatus.PENDING,
    tenant: str = "acme",
    employee_id: str = "emp-1",
    email: str | None = "jane@acme.test",
    legal_entity: str = "le-fr",
    department: str | None = "dep-sales",
    leave_account: str = "la-paid",
    category: str | None = "cat-holidays",
    **absence: Any,
) -> AbsenceEvent:
    """A valid event unless told otherwise; ``absence`` overrides fields of the Absence."""
    start = dt.date(2026, 5, 4)
    fields: dict[str, Any] = {
        "id": absence_id or f"abs-{uuid.uuid4().hex[:8]}",
        "status": status,
        "start_date": start,
        "start_half": HalfDay.AM,
        "end_date": start + dt.timedelta(days=2),
        "end_half": HalfDay.PM,
        "time_zone": "Europe/Paris",
        "leave_account": LeaveAccount(leave_account, "Paid leave", category, "Holidays"),
        **absence,
    }
    return AbsenceEvent(
        event_id=str(uuid.uuid4()),
        occurred_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
        tenant=tenant,
        change=change,
        version=version,
        absence=Absence(**fields),
        employee=Employee(employee_id, "Jane Doe", legal_entity, email, "E-001", department),
    )


def next_change(
    event: AbsenceEvent, change: ChangeKind, status: AbsenceStatus, **employee: Any
) -> AbsenceEvent:
    """The following change of the same absence (new event id, version + 1)."""
    return replace(
        event,
        event_id=str(uuid.uuid4()),
        change=change,
        version=event.version + 1,
        absence=replace(event.absence, status=status),
        employee=replace(event.employee, **employee),
    )


def encode(event: AbsenceEvent) -> bytes:
    return codec_for("AbsenceEvent").encode(event.to_avro())


RawRecord = tuple[bytes | None, bytes | None, list[tuple[str, str | bytes | None]] | None]
"""(key, value, headers)"""


def produce_raw(settings: Settings, records: Sequence[RawRecord]) -> None:
    """(key, value, headers) records to ``absences``, in order, acknowledged."""
    producer = make_producer(settings)
    topic = Topics(settings).absences
    for key, value, headers in records:
        producer.produce(topic, key=key, value=value, headers=headers or [])
    assert producer.flush(30) == 0


def produce_events(settings: Settings, events: list[AbsenceEvent]) -> None:
    produce_raw(settings, [(e.key.encode(), encode(e), None) for e in events])


def add_destination(settings: Settings, dest_id: str, tenant: str = "acme", **fields: Any) -> Destination:
    destination = Destination(id=dest_id, tenant=tenant, name=dest_id, kind="http", **fields)
    publish_destination(settings, destination)
    return destination


def filters(**values: list[str]) -> Filters:
    return Filters(**{k: tuple(v) for k, v in values.items()})


def read_committed(
    settings: Settings, topic: str, done: Callable[[list[Message]], bool], limit: float = READ_LIMIT
) -> list[Message]:
    """Every committed record of ``topic`` from the start, read until ``done(records)`` or the limit."""
    consumer = Consumer(
        {
            **connection_config(settings),
            "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    records: list[Message] = []
    deadline = dt.datetime.now() + dt.timedelta(seconds=limit)
    try:
        while not done(records) and dt.datetime.now() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, str(error)
                continue
            records.append(msg)
    finally:
        consumer.close()
    return records


def deliveries_of(records: list[Message]) -> list[Delivery]:
    codec = codec_for("Delivery")
    return [Delivery.from_avro(codec.decode(m.value())) for m in records]


def statuses_of(records: list[Message]) -> list[DeliveryStatus]:
    codec = codec_for("DeliveryStatus")
    return [DeliveryStatus.from_avro(codec.decode(m.value())) for m in records]


def headers_of(msg: Message) -> dict[str, bytes]:
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {name: value if isinstance(value, bytes) else (value or "").encode() for name, value in pairs}


@contextmanager
def running_fanout(settings: Settings, worker_id: str = "test") -> Iterator[FanoutProcessor]:
    """A fan-out worker in a thread; stopped (and its error, if any, raised) on exit."""
    processor = FanoutProcessor(settings, DestinationTable(settings))
    stop = threading.Event()
    errors: list[BaseException] = []

    def stalled() -> None:
        # Production ends the process (a supervisor starts it again): here that would end pytest
        # itself, in whichever test runs by then. The stall fails this test instead.
        errors.append(AssertionError(f"the fan-out loop stalled for {settings.stall_timeout:g}s"))

    runtime = ProcessorRuntime(settings, processor, worker_id=worker_id, on_stall=stalled)

    def run() -> None:
        try:
            runtime.run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="fanout-test", daemon=True)
    thread.start()
    try:
        yield processor
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), f"fan-out worker did not stop {errors}"
    if errors:
        raise errors[0]


def read_to_end(settings: Settings, topic: str) -> list[Message]:
    """Every committed record of ``topic`` up to its current end (all partitions)."""
    consumer = Consumer(
        {
            **connection_config(settings),
            "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        partitions = list(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        marks = {p: watermarks(consumer, topic, p) for p in partitions}
        pending = [p for p, (low, high) in marks.items() if high > low]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list[Message] = []
        deadline = dt.datetime.now() + dt.timedelta(seconds=READ_LIMIT)
        while dt.datetime.now() < deadline:
            positions = consumer.position([TopicPartition(topic, p) for p in pending])
            if all(tp.offset >= marks[tp.partition][1] for tp in positions):
                return records
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                records.append(msg)
        raise AssertionError(f"{topic} not read to its end in {READ_LIMIT}s")
    finally:
        consumer.close()


def at_least(count: int) -> Callable[[list[Message]], bool]:
    """A ``done`` predicate for :func:`read_committed`: ``count`` records read."""
    return lambda records: len(records) >= count
