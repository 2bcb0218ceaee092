"""Poison records on a real broker (issue 12, item 1): no record stops a processor.

Each probe is a record the broker accepts but absync used to choke on (the fan-out could not write
its dead-letter copy, raised, and crashed again on the same record after every restart). Each is
followed by good records, which must all be delivered to a loopback receiver by the real fan-out and
delivery worker; the probe itself lands in ``absences.invalid``, truncated when too large to copy
whole, with its size and SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import replace

import pytest
from confluent_kafka import Message
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
)

from schemas.errors import ValidationError
from schemas.models import AbsenceEvent, validate
from streams.destinations import DestinationTable
from streams.kafka import make_producer
from streams.output import Output
from streams.processor import Processor, ProcessorRuntime
from streams.publisher import AbsencePublisher
from streams.settings import Settings
from streams.state import StateStore
from streams.topics import Topics
from tests.connectors.test_slack import (
    CHANNEL,
    EXPECTED_EN,
    Worker,
    add_slack_destination,
    slack,
    the_week,
    wait_until,
)
from tests.delivery.harness import http_destination
from tests.fakes.receiver import Receiver
from tests.fakes.slack import FakeSlack
from tests.streams_helpers import (
    add_destination,
    at_least,
    deliveries_of,
    encode,
    headers_of,
    make_event,
    read_committed,
    read_to_end,
)
from tests.test_resync import pipeline, wait_successful

__all__ = ["slack"]  # the Slack tests' fixture (a fake Slack on loopback)

FIVE_MB = 5 * 1024 * 1024
GARBAGE = 999_892
HUGE_NAME = 990_000


def raise_max_message_bytes(settings: Settings, topic: str, value: int) -> None:
    """What a customer's cluster may have: a topic accepting records larger than Kafka's default."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    entry = ConfigEntry("max.message.bytes", str(value), incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource("topic", topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


def huge_name_event() -> AbsenceEvent:
    event = make_event()
    return replace(event, employee=replace(event.employee, display_name="J" * HUGE_NAME))


def test_poison_records_are_dead_lettered_and_every_good_record_behind_them_is_delivered(
    settings: Settings,
) -> None:
    topics = Topics(settings)
    raise_max_message_bytes(settings, topics.absences, 8 * 1024 * 1024)
    zeros = bytes(FIVE_MB)
    garbage = os.urandom(GARBAGE)
    huge = huge_name_event()
    probes: list[tuple[str, bytes, bytes]] = [
        ("zeros", b"acme|abs-zeros", zeros),
        ("garbage", b"acme|abs-garbage", garbage),
        ("huge-name", huge.key.encode(), encode(huge)),
    ]
    good = [make_event(f"abs-good-{i}") for i in range(len(probes) * 3)]

    with Receiver() as receiver, pipeline(settings) as statuses:
        http_destination(settings, receiver.url + "/hook", "dst-poison")
        # zstd, and a producer allowed 8 MB: the 5 MB of zeros reach the broker as a few kB.
        producer = make_producer(settings, **{"compression.type": "zstd", "message.max.bytes": 8_000_000})
        for i, (name, key, value) in enumerate(probes):
            producer.produce(topics.absences, key=key, value=value, headers=[("probe", name.encode())])
            for event in good[3 * i : 3 * i + 3]:
                producer.produce(topics.absences, key=event.key.encode(), value=encode(event))
        assert producer.flush(30) == 0

        wanted = {e.event_id for e in good}
        records = read_committed(
            settings, topics.deliveries, lambda r: wanted <= {d.event.event_id for d in deliveries_of(r)}
        )
        sent = [d for d in deliveries_of(records) if d.event.event_id in wanted]
        wait_successful(statuses, sent)
        invalid = read_committed(settings, topics.invalid, at_least(len(probes)))

    assert {d.event.event_id for d in sent} == wanted
    assert set(receiver.state) == {e.absence.id for e in good}
    by_probe = {headers_of(m)["probe"].decode(): m for m in invalid}
    assert sorted(by_probe) == sorted(name for name, _, _ in probes) and len(invalid) == len(probes)
    for name, key, value in probes:
        msg = by_probe[name]
        headers = headers_of(msg)
        assert headers["absync-error-kind"] == b"too-large", name
        assert "ABSYNC_MAX_EVENT_BYTES" in headers["absync-reason"].decode(), name
        assert headers["absync-truncated"] == b"true", name
        assert headers["absync-original-size"] == str(len(value)).encode(), name
        assert headers["absync-original-sha256"] == hashlib.sha256(value).hexdigest().encode(), name
        assert headers["absync-source-topic"] == topics.absences.encode(), name
        assert msg.key() == key, name
        copy = msg.value() or b""
        assert 0 < len(copy) < len(value) and value.startswith(copy), name
        assert len(copy) + len(key) + sum(len(k) + len(v) for k, v in headers.items()) < 900_000


def test_an_event_over_the_size_limit_is_refused_by_the_publisher(settings: Settings) -> None:
    small = settings.model_copy(update={"max_event_bytes": 1000})
    event = make_event()
    long_name = replace(event, employee=replace(event.employee, display_name="J" * 500))
    long_name = replace(
        long_name,
        absence=replace(event.absence, leave_account=replace(event.absence.leave_account, name="L" * 500)),
    )
    validate(long_name)  # every field within its limit: only the whole is too large
    with AbsencePublisher(small) as publisher:
        with pytest.raises(ValidationError, match=r"more than ABSYNC_MAX_EVENT_BYTES \(1000\)"):
            publisher.publish(long_name)
        with pytest.raises(ValidationError, match="990000 characters long"):
            publisher.publish(huge_name_event())
        publisher.publish(event)
    assert [m.key() for m in read_to_end(settings, Topics(settings).absences)] == [event.key.encode()]


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("display_name", "Jane\x00Doe", "employee.display_name contains the control character U+0000"),
        ("display_name", "Jane\nDoe", "U+000A"),
        ("display_name", "Jane\x9bDoe", "U+009B"),
        ("display_name", "J" * 513, "employee.display_name is 513 characters long, more than the 512"),
        ("id", "e" * 257, "employee.id is 257 characters long"),
        ("email", "x" * 320 + "@a.test", "employee.email is 327 characters long"),
    ],
)
def test_text_fields_are_refused_with_a_reason_naming_the_field(field: str, value: str, reason: str) -> None:
    event = make_event()
    bad = replace(event, employee=replace(event.employee, **{field: value}))
    with pytest.raises(ValidationError, match=reason.replace("+", r"\+")):
        validate(bad)
    validate(replace(event, employee=replace(event.employee, display_name="Zoë Ångström-Łukasiewicz 李")))


def test_a_tenant_with_the_key_separator_is_refused() -> None:
    with pytest.raises(ValidationError, match="tenant may not contain"):
        validate(replace(make_event(), tenant="acme|other"))


class _Echo(Processor):
    """Copies each record to ``out``; a record with header ``big`` makes a 1.2 MB output."""

    name = "echo"

    def __init__(self, source: str, out: str, dead: str) -> None:
        self.topics = [source]
        self.out, self.dead = out, dead

    def handle(self, msg: Message) -> list[Output]:
        value = msg.value() or b""
        if any(name == "big" for name, _ in msg.headers() or []):
            value = value * 1300
        return [Output(self.out, msg.key(), value)]

    def dead_letter(self, msg: Message, exc: Exception) -> list[Output]:
        return [Output(self.dead, msg.key(), msg.value(), [("reason", str(exc).encode())])]


def test_the_runtime_never_writes_an_output_kafka_would_refuse(settings: Settings) -> None:
    """Any processor: an output over ABSYNC_MAX_RECORD_BYTES dead-letters its record instead; a
    dead-letter output over it becomes a truncated copy; the records behind are processed."""
    topics = Topics(settings)
    source, out, dead = topics.absences, topics.deliveries, topics.invalid
    producer = make_producer(settings)
    records = [
        (b"k1", b"x" * 1000, []),
        (b"k2", b"y" * 1000, [("big", b"1")]),  # 1.3 MB output
        (b"k3", b"z" * 950_000, []),  # its copy is over the limit too: a truncated dead letter
        (b"k4", b"w" * 1000, []),
    ]
    for key, value, headers in records:
        producer.produce(source, key=key, value=value, headers=headers, partition=0)
    assert producer.flush(30) == 0

    runtime = ProcessorRuntime(settings, _Echo(source, out, dead), worker_id="echo")
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            runtime.run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        copied = read_committed(settings, out, at_least(2))
        letters = read_committed(settings, dead, at_least(2))
    finally:
        stop.set()
        thread.join(60)
    assert errors == []
    assert sorted(m.key() or b"" for m in copied) == [b"k1", b"k4"]
    by_key = {m.key(): m for m in letters}
    assert sorted(by_key) == [b"k2", b"k3"]
    assert by_key[b"k2"].value() == b"y" * 1000  # the processor's own dead letter fits: whole
    assert b"ABSYNC_MAX_RECORD_BYTES" in headers_of(by_key[b"k2"])["reason"]
    k3 = headers_of(by_key[b"k3"])
    assert k3["absync-truncated"] == b"true" and k3["absync-original-size"] == b"950000"
    assert k3["absync-original-sha256"] == hashlib.sha256(b"z" * 950_000).hexdigest().encode()
    assert len(by_key[b"k3"].value() or b"") == 64 * 1024


def test_the_slack_daily_post_is_made_with_poison_records_among_the_absences(
    settings: Settings, slack: FakeSlack
) -> None:
    """The Slack processors read ``absences`` too: the same probes stop neither of them."""
    topics = Topics(settings)
    raise_max_message_bytes(settings, topics.absences, 8 * 1024 * 1024)
    huge = huge_name_event()
    add_slack_destination(settings, slack)
    producer = make_producer(settings, **{"compression.type": "zstd", "message.max.bytes": 8_000_000})
    week = the_week()
    probes = [(b"acme|abs-zeros", bytes(FIVE_MB)), (b"acme|abs-garbage", os.urandom(GARBAGE))]
    for key, value in [*probes, (huge.key.encode(), encode(huge))]:
        producer.produce(topics.absences, key=key, value=value)
    for event in week:
        producer.produce(topics.absences, key=event.key.encode(), value=encode(event))
    assert producer.flush(30) == 0
    worker = Worker(settings)
    try:
        wait_until(
            lambda: bool(slack.channels[CHANNEL].messages) and "Zoe" in slack.messages(CHANNEL)[0]["text"]
        )
        alive = worker.alive()
    finally:
        worker.stop()
    assert alive
    [post] = slack.messages(CHANNEL)
    assert post["text"] == EXPECTED_EN


def test_a_destination_record_with_a_key_that_is_not_utf8_does_not_stop_the_table(settings: Settings) -> None:
    """Every processor reads the destinations topic: one bad record there used to end the table's
    thread (UnicodeDecodeError), so the table never became ready or stopped following changes."""
    producer = make_producer(settings)
    producer.produce(Topics(settings).destinations, key=b"\xff\xfe", value=b"\xc3\x01garbage")
    producer.produce(Topics(settings).destinations, key=b"\xff\xfd", value=None)
    assert producer.flush(30) == 0
    add_destination(settings, "dst-after")
    table = DestinationTable(settings).start()
    try:
        table.wait_ready(60)
        assert [d.id for d in table.all()] == ["dst-after"]
        add_destination(settings, "dst-later")
        deadline = time.monotonic() + 60
        while table.get("dst-later") is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert table.get("dst-later") is not None
    finally:
        table.close()


class _Keeper(_Echo):
    """Keeps each record's value as state (a changelog record per input record)."""

    name = "keeper"

    def __init__(self, settings: Settings, source: str, out: str, dead: str) -> None:
        super().__init__(source, out, dead)
        self._store = StateStore(settings, Topics(settings).fanout_state)
        self.stores = [self._store]

    def handle(self, msg: Message) -> list[Output]:
        self._store.put(msg.partition() or 0, (msg.key() or b"").decode(), msg.value() or b"")
        return [Output(self.out, msg.key(), b"kept")]


def test_a_state_value_too_large_for_its_changelog_fails_only_its_record(settings: Settings) -> None:
    topics = Topics(settings)
    source, out, dead = topics.absences, topics.deliveries, topics.invalid
    producer = make_producer(settings)
    for key, value in [(b"k1", b"a" * 100), (b"k2", b"b" * 950_000), (b"k3", b"c" * 100)]:
        producer.produce(source, key=key, value=value, partition=0)
    assert producer.flush(30) == 0
    runtime = ProcessorRuntime(settings, _Keeper(settings, source, out, dead), worker_id="keeper")
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            runtime.run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        kept = read_committed(settings, out, at_least(2))
        letters = read_committed(settings, dead, at_least(1))
    finally:
        stop.set()
        thread.join(60)
    assert errors == []
    assert sorted(m.key() or b"" for m in kept) == [b"k1", b"k3"]
    [letter] = letters
    assert letter.key() == b"k2" and headers_of(letter)["absync-original-size"] == b"950000"
    changelog = read_to_end(settings, topics.fanout_state)
    assert sorted(m.key() or b"" for m in changelog) == [b"k1", b"k3"]
