"""What the delivery tests share: a worker running in a thread, an http destination pointing at the
loopback receiver, producing deliveries and commands, and reading the status events back."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from processors.delivery import DeliveryWorker
from schemas.codec import codec_for
from schemas.delivery import Command, CommandKind, Delivery, DeliveryStatus, Status, Trigger
from schemas.destination import ChangeSelection, Destination
from schemas.models import AbsenceStatus, ChangeKind
from streams.delay import due_at_header
from streams.destinations import publish_destination
from streams.kafka import connection_config, group_id, make_admin, make_producer
from streams.secrets import SecretBox
from streams.settings import Settings
from streams.topics import Topics, create_topics
from tests.conftest import make_settings
from tests.connectors.deliveries import TENANT, make_delivery
from tests.fakes.receiver import ReceivedRequest, Receiver
from tests.streams_helpers import watermarks

SIGNING_SECRET = "whsec_" + base64.b64encode(b"delivery-tests-signing-key-32byte").decode()


class RunningWorker:
    """A DeliveryWorker running in its own thread and event loop, until ``stop()``."""

    def __init__(self, settings: Settings) -> None:
        self.worker = DeliveryWorker(settings)
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="delivery-worker", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.worker.run(self._stop))
        except BaseException as exc:
            self.error = exc
        finally:
            self._loop.close()

    def start(self) -> RunningWorker:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        assert not self._thread.is_alive(), "the worker did not stop"
        assert self.error is None, f"the worker failed: {self.error!r}"

    def __enter__(self) -> RunningWorker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def http_destination(
    settings: Settings,
    url: str,
    dest_id: str = "dst-http",
    changes: ChangeSelection = ChangeSelection.ALL,
    rate_limit: float | None = None,
    tenant: str = TENANT,
    **extra: object,
) -> Destination:
    """Publishes a signed absync.v1 destination for ``url`` (``rate_limit``: requests per second at
    most) and returns it."""
    box = SecretBox.from_settings(settings)
    destination = Destination(
        id=dest_id,
        tenant=tenant,
        name=f"receiver {dest_id}",
        kind="http",
        changes=changes,
        settings={"url": url, **extra},
        secrets={"signing_secrets": box.encrypt(SIGNING_SECRET)},
        revision=1,
        rate_limit=rate_limit,
    )
    publish_destination(settings, destination)
    return destination


def change(
    absence_id: str, version: int, kind: ChangeKind, destination_id: str = "dst-http", **extra: object
) -> Delivery:
    """A delivery of one absence change (DELETE for cancel/delete, UPSERT otherwise)."""
    status = {
        ChangeKind.APPROVED: AbsenceStatus.APPROVED,
        ChangeKind.CANCELLED: AbsenceStatus.CANCELLED,
    }.get(kind, AbsenceStatus.PENDING)
    return make_delivery(
        absence_id=absence_id,
        version=version,
        change=kind,
        status=status,
        destination_id=destination_id,
        **extra,  # type: ignore[arg-type]
    )


class Feed:
    """Produces deliveries and commands the way the fan-out and the operators do (by key)."""

    def __init__(self, settings: Settings) -> None:
        self.topics = Topics(settings)
        self._producer = make_producer(settings)

    def deliveries(self, *deliveries: Delivery) -> None:
        codec = codec_for("Delivery")
        for delivery in deliveries:
            self._producer.produce(
                self.topics.deliveries, key=delivery.key, value=codec.encode(delivery.to_avro())
            )
        self.flush()

    def replayed(self, *deliveries: Delivery) -> list[Delivery]:
        """Deliveries on the replay lane, as a resync's reach it (trigger REPLAY); returns them."""
        codec = codec_for("Delivery")
        replays = [d.evolve(trigger=Trigger.REPLAY) for d in deliveries]
        for delivery in replays:
            self._producer.produce(
                self.topics.replay, key=delivery.key, value=codec.encode(delivery.to_avro())
            )
        self.flush()
        return replays

    def delayed(self, delivery: Delivery, stage: int, partition: int) -> None:
        """A record straight into a retry topic (as the worker writes it: header and explicit partition)."""
        self._producer.produce(
            self.topics.retries[stage - 1],
            key=delivery.key,
            value=codec_for("Delivery").encode(delivery.evolve(stage=stage).to_avro()),
            partition=partition,
            headers=[due_at_header(delivery.due_at)],
        )

    def command(self, kind: CommandKind, delivery: Delivery) -> None:
        command = Command(
            command_id=uuid.uuid4().hex,
            kind=kind,
            delivery_id=delivery.delivery_id,
            destination_id=delivery.destination_id,
            absence_id=delivery.absence_id,
            tenant=delivery.tenant,
            issued_by="tests",
            issued_at=dt.datetime.now(dt.UTC),
        )
        self._producer.produce(
            self.topics.commands, key=command.key, value=codec_for("Command").encode(command.to_avro())
        )
        self.flush()

    def flush(self) -> None:
        assert self._producer.flush(30) == 0, "Kafka did not acknowledge"


class StatusLog:
    """Reads ``delivery-status`` from the start; ``wait`` blocks until a predicate holds."""

    def __init__(self, settings: Settings) -> None:
        self._consumer = Consumer(
            {
                **connection_config(settings),
                "group.id": f"tests-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
        topic = Topics(settings).status
        partitions = self._consumer.list_topics(topic, timeout=30).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self.events: list[DeliveryStatus] = []
        self._by_delivery: dict[str, list[DeliveryStatus]] = {}

    def close(self) -> None:
        self._consumer.close()

    def poll(self, seconds: float = 0.2) -> None:
        for msg in self._consumer.consume(1000, seconds):
            error = msg.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, str(error)
                continue
            event = DeliveryStatus.from_avro(codec_for("DeliveryStatus").decode(msg.value()))
            self.events.append(event)
            self._by_delivery.setdefault(event.delivery_id, []).append(event)

    def of(self, delivery_id: str) -> list[DeliveryStatus]:
        return list(self._by_delivery.get(delivery_id, []))

    def latest(self, delivery_id: str) -> Status | None:
        """The status a delivery is in now (its latest status event), None before the first."""
        events = self._by_delivery.get(delivery_id)
        return events[-1].status if events else None

    def wait(self, predicate: Callable[[StatusLog], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            assert time.monotonic() < deadline, "status events did not arrive in time"
            self.poll()

    def wait_status(self, delivery_id: str, *statuses: Status, timeout: float = 60.0) -> DeliveryStatus:
        """Waits for a status event of ``delivery_id`` in ``statuses`` and returns it."""
        self.wait(lambda log: any(e.status in statuses for e in log.of(delivery_id)), timeout)
        return next(e for e in self.of(delivery_id) if e.status in statuses)

    def wait_settled(self, delivery_id: str, timeout: float = 60.0) -> DeliveryStatus:
        """Waits until the delivery is SUCCESSFUL, ERROR or SUPERSEDED; returns that event."""
        return self.wait_status(
            delivery_id, Status.SUCCESSFUL, Status.ERROR, Status.SUPERSEDED, timeout=timeout
        )


def requests_for(receiver: Receiver, absence_id: str) -> list[ReceivedRequest]:
    return [r for r in list(receiver.requests) if r.absence_id == absence_id]


def wait_consumed(settings: Settings, topic: str, timeout: float = 60.0) -> None:
    """Waits until the delivery worker has committed every record of ``topic`` (all handled)."""
    consumer = Consumer({**connection_config(settings), "group.id": group_id(settings, "delivery")})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {p: watermarks(consumer, topic, p)[1] for p in partitions}
        deadline = time.monotonic() + timeout
        while True:
            committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=30)
            if all(ends[tp.partition] == 0 or tp.offset >= ends[tp.partition] for tp in committed):
                return
            assert time.monotonic() < deadline, f"the worker did not consume {topic} in time"
            time.sleep(0.2)
    finally:
        consumer.close()


def drop_topics(settings: Settings) -> None:
    """Deletes the topics of a test (the shared broker's memory grows with every topic kept)."""
    admin = make_admin(settings)
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(settings.topic_prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            future.result()


@contextmanager
def isolated(bootstrap: str, tmp_path: Path, **overrides: object) -> Iterator[Settings]:
    """Settings with their own topic prefix (tests/conftest.py's make_settings), topics created, and
    deleted after the test."""
    settings = make_settings(bootstrap, tmp_path, **overrides)
    create_topics(settings)
    try:
        yield settings
    finally:
        drop_topics(settings)
