"""Bulk resync by replaying ``absences``, and the re-sending of deliveries left in Error.

Resync (:func:`run_resync`): brings one destination to what it should hold *now*, e.g. a destination
added after the absences were published (the fan-out does not back-fill new matches), or one that
lost its data. ``absences`` is compacted by absence id, so the latest state of every absence is
always there (older history may be gone). The replay reads the topic from the offsets of ``since``
(``offsets_for_times``; from the beginning without it) up to the end offsets taken when the resync
started, and sends each absence once, from its latest state:

- the destination should hold it (:func:`processors.fanout.should_hold`, the fan-out's own rule):
  an UPSERT;
- its latest state removes it (cancelled, deleted) and it matches the destination's tenant and
  filters: a DELETE. The resync cannot know what the destination holds, but such an absence may have
  been sent before its removal was missed; only removals inside the replayed window are sent (a
  ``since`` bounds them) and every connector treats the DELETE of an unknown absence as done;
- anything else (another tenant, filters not matching, pending for an approved-only destination,
  outside ``entity``) is skipped. An absence that stopped matching the filters gets no DELETE: whether
  the destination held it is unknowable here (the fan-out's sweep handles filter changes).

Each one is a ``Delivery`` with trigger REPLAY and a deterministic id (destination, event id, REPLAY,
operation), produced to ``deliveries`` keyed ``<destination>|<absence>``, with a PENDING status.
Idempotence: a second run yields the same ids, which every connector passes on as its idempotency
key (``webhook-id``...), so the destination sees no second effect. The delivery carries the latest
version of the absence: the worker's convergence supersedes only *older* versions, so a replay of the
version already delivered is still sent (and a live change newer than the snapshot wins).

Two passes per partition keep memory bounded and send every absence once: the scan records the
offset of the latest record of each key; the send pass re-reads the partition and sends only those.
Resumable: the send position per partition (and the window) is checkpointed to
``<data_dir>/resync/<destination>.json`` after the records before it are acknowledged by Kafka; a
new run with the same parameters continues from it (a partition interrupted mid-way is re-scanned,
then sent from its position). The file is removed once the resync completes. Rate-limited: at most
``rate`` deliveries per second, so the worker keeps room for live deliveries.

Known limit: the fan-out does not learn that the destination now holds what a resync sent (its
``held`` set lives in its own transactional state). A later change that keeps the absence held is
sent as usual (UPSERT, and the fan-out then records it as held); but a cancellation or deletion that
comes straight after the resync is not sent to the destination until it is resynced again.

Replay of failed deliveries (:func:`replay_failed`): one RETRY ``Command`` per delivery in Error.
The worker then makes one attempt now of the key's *latest* delivery, re-read from its state (so a
replay never sends an outdated version), trigger RETRY. A ``Delivery`` written into the first retry
topic instead would be dropped by the worker: it accepts a retry record only when it is the next
stage expected for the key's latest delivery, and a delivery in Error expects none (the guard that
stops duplicated retries after a crash). Commands travel beside ``deliveries`` (not queued behind
live deliveries in the main topic) and are rate-limited the same way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import structlog
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from processors import ProcessorError
from processors.fanout import should_hold
from processors.validation import InvalidRecord, absence_codec, decode_event
from schemas.codec import AvroCodec, codec_for
from schemas.delivery import (
    Command,
    CommandKind,
    Delivery,
    DeliveryStatus,
    Operation,
    Status,
    Trigger,
    delivery_id_for,
    now_utc,
)
from schemas.destination import Destination
from schemas.models import AbsenceEvent, AbsenceStatus
from streams.destinations import DestinationTable
from streams.kafka import group_id, make_consumer, make_producer
from streams.settings import Settings
from streams.topics import Topics

log = structlog.get_logger(__name__)

DEFAULT_RATE = 500.0
"""Deliveries per second a resync sends by default: well under the worker's throughput."""
CHECKPOINT_INTERVAL = 1.0
"""Seconds between checkpoints of the send position."""
POLL_BATCH = 1000
POLL_TIMEOUT = 0.1
"""Seconds a read waits for more records: the last batch of a partition waits this long."""
KAFKA_TIMEOUT = 30.0


class ResyncError(ProcessorError):
    """A resync cannot run (unknown or disabled destination) or Kafka refused its output."""


@dataclass(frozen=True, slots=True)
class ResyncRequest:
    destination_id: str
    since: dt.datetime | None = None
    """Replay the records written at or after this time (None: the whole topic)."""
    entity: str | None = None
    """Only absences of employees of this legal entity."""
    rate: float = DEFAULT_RATE


@dataclass(slots=True)
class ResyncProgress:
    """Where a resync is: ``done``/``total`` count offsets of the send pass over the whole window."""

    phase: str = "starting"
    done: int = 0
    total: int = 0
    upserts: int = 0
    deletes: int = 0
    resumed: bool = False
    completed: bool = False


ProgressCallback = Callable[[ResyncProgress], None]


# -- rate limit -----------------------------------------------------------------------------------


class RateLimiter:
    """At most ``rate`` acquisitions per second (smooth: one every 1/rate s, a burst of one second)."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("the rate must be positive")
        self._interval = 1.0 / rate
        self._burst = max(1.0, rate)
        self._tokens = 1.0
        self._last = time.monotonic()

    def acquire(self, stop: threading.Event) -> bool:
        """Waits for a token; False if ``stop`` was set meanwhile."""
        while True:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._last) / self._interval)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            if stop.wait((1.0 - self._tokens) * self._interval):
                return False


# -- checkpoint -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Checkpoint:
    """The replay window and the send position per partition, as JSON under ``data_dir/resync``."""

    destination_id: str
    since: str | None
    entity: str | None
    start: dict[int, int]
    end: dict[int, int]
    position: dict[int, int]
    upserts: int = 0
    deletes: int = 0

    @staticmethod
    def path_for(settings: Settings, destination_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in destination_id)
        return settings.data_dir / "resync" / f"{safe}.json"

    @classmethod
    def load(cls, path: Path, request: ResyncRequest) -> Checkpoint | None:
        """The checkpoint of an interrupted run with the same parameters, else None."""
        try:
            data = json.loads(path.read_text())
            checkpoint = cls(
                destination_id=data["destination_id"],
                since=data["since"],
                entity=data["entity"],
                start={int(p): o for p, o in data["start"].items()},
                end={int(p): o for p, o in data["end"].items()},
                position={int(p): o for p, o in data["position"].items()},
                upserts=int(data["upserts"]),
                deletes=int(data["deletes"]),
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("unreadable resync checkpoint ignored", path=str(path), error=str(exc))
            return None
        if (checkpoint.destination_id, checkpoint.since, checkpoint.entity) != (
            request.destination_id,
            _iso(request.since),
            request.entity,
        ):
            log.info("resync checkpoint of other parameters ignored", path=str(path))
            return None
        return checkpoint

    def save(self, path: Path) -> None:
        """Atomically (write then rename): an interruption never leaves half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# -- resync ---------------------------------------------------------------------------------------


def load_destination(settings: Settings, destination_id: str) -> Destination:
    """The destination to resync, read from the destinations topic; it must be able to receive."""
    table = DestinationTable(settings).start()
    try:
        table.wait_ready(KAFKA_TIMEOUT)
        destination = table.get(destination_id)
    finally:
        table.close()
    if destination is None:
        raise ResyncError(f"unknown destination {destination_id!r}")
    if not destination.enabled:
        raise ResyncError(f"destination {destination_id!r} is disabled: enable it before a resync")
    if not destination.receives_changes:
        raise ResyncError(f"destination {destination_id!r} does not receive absence changes")
    return destination


def replay_delivery(destination: Destination, event: AbsenceEvent, operation: Operation) -> Delivery:
    """The REPLAY delivery of an absence's latest state; its id depends only on (destination, event,
    operation), so a second resync sends the same ids."""
    now = now_utc()
    return Delivery(
        delivery_id=delivery_id_for(destination.id, event.event_id, f"{Trigger.REPLAY}:{operation}"),
        destination_id=destination.id,
        tenant=event.tenant,
        absence_id=event.absence.id,
        version=event.version,
        operation=operation,
        event=event,
        due_at=now,
        created_at=now,
        trigger=Trigger.REPLAY,
    )


def replay_operation(destination: Destination, event: AbsenceEvent) -> Operation | None:
    """What a resync sends for this latest state (see the module docstring), None for nothing."""
    if should_hold(destination, event):
        return Operation.UPSERT
    removed = event.change.removes or event.absence.status == AbsenceStatus.CANCELLED
    return Operation.DELETE if removed and destination.matches(event) else None


class _Output:
    """The idempotent producer of deliveries and their PENDING statuses; errors surface at flush."""

    def __init__(self, settings: Settings) -> None:
        self._producer: Producer = make_producer(settings)
        self._topics = Topics(settings)
        self._errors: list[str] = []

    def _acknowledged(self, err: object, _msg: Message) -> None:
        if err is not None:
            self._errors.append(str(err))

    def produce(self, topic: str, key: str, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, key=key.encode(), value=value, on_delivery=self._acknowledged)
                break
            except BufferError:  # local queue full: let the acknowledgements catch up
                self._producer.poll(0.05)
        self._producer.poll(0)

    def delivery(self, delivery: Delivery) -> None:
        status = DeliveryStatus.for_delivery(delivery, Status.PENDING, 0, occurred_at=delivery.created_at)
        self.produce(self._topics.deliveries, delivery.key, codec_for("Delivery").encode(delivery.to_avro()))
        self.produce(
            self._topics.status, delivery.delivery_id, codec_for("DeliveryStatus").encode(status.to_avro())
        )

    def flush(self) -> None:
        """Waits until Kafka acknowledged everything produced; raises if it refused any."""
        if self._producer.flush(KAFKA_TIMEOUT) != 0:
            raise ResyncError("Kafka did not acknowledge the resync's deliveries in time")
        if self._errors:
            raise ResyncError(f"Kafka refused resync output: {self._errors[0]}")


@dataclass
class _Replay:
    """One run of a resync (see :func:`run_resync`)."""

    settings: Settings
    destination: Destination
    request: ResyncRequest
    stop: threading.Event
    progress: ProgressCallback
    topic: str = ""
    state: ResyncProgress = field(default_factory=ResyncProgress)

    def run(self) -> ResyncProgress:
        self.topic = Topics(self.settings).absences
        path = Checkpoint.path_for(self.settings, self.destination.id)
        consumer = make_consumer(
            self.settings,
            group_id(self.settings, f"resync-{self.destination.id}"),
            **{"enable.partition.eof": True},
        )
        output = _Output(self.settings)
        try:
            checkpoint = Checkpoint.load(path, self.request)
            self.state.resumed = checkpoint is not None
            if checkpoint is None:
                checkpoint = self._window(consumer)
            self.state.upserts, self.state.deletes = checkpoint.upserts, checkpoint.deletes
            self.state.total = sum(checkpoint.end[p] - checkpoint.start[p] for p in checkpoint.start)
            self._report(checkpoint, "replaying")
            limiter = RateLimiter(self.request.rate)
            for partition in sorted(checkpoint.start):
                if checkpoint.position[partition] >= checkpoint.end[partition]:
                    continue
                self._report(checkpoint, f"scanning partition {partition}")
                latest = self._scan(consumer, partition, checkpoint)
                self._report(checkpoint, f"sending partition {partition}")
                if not self._send(consumer, partition, checkpoint, latest, output, limiter, path):
                    log.info("resync interrupted", destination=self.destination.id, **self._counts())
                    return self.state
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self.state.completed = True
            self._report(checkpoint, "done")
            log.info("resync completed", destination=self.destination.id, **self._counts())
            return self.state
        finally:
            consumer.close()

    def _counts(self) -> dict[str, int]:
        return {"upserts": self.state.upserts, "deletes": self.state.deletes}

    def _report(self, checkpoint: Checkpoint, phase: str) -> None:
        self.state.phase = phase
        self.state.done = sum(checkpoint.position[p] - checkpoint.start[p] for p in checkpoint.start)
        self.progress(self.state)

    def _window(self, consumer: Consumer) -> Checkpoint:
        """Start offsets (of ``since``, else the first), end offsets (now) per partition."""
        metadata = consumer.list_topics(self.topic, timeout=KAFKA_TIMEOUT).topics[self.topic]
        partitions = sorted(metadata.partitions)
        marks = {
            p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=KAFKA_TIMEOUT)
            for p in partitions
        }
        start = {p: low for p, (low, _) in marks.items()}
        end = {p: high for p, (_, high) in marks.items()}
        if self.request.since is not None:
            ms = int(self.request.since.timestamp() * 1000)
            found = consumer.offsets_for_times(
                [TopicPartition(self.topic, p, ms) for p in partitions], timeout=KAFKA_TIMEOUT
            )
            # -1: no record at or after `since` in that partition: nothing to replay there.
            start = {tp.partition: tp.offset if tp.offset >= 0 else end[tp.partition] for tp in found}
        return Checkpoint(
            destination_id=self.destination.id,
            since=_iso(self.request.since),
            entity=self.request.entity,
            start=start,
            end=end,
            position=dict(start),
        )

    def _records(self, consumer: Consumer, partition: int, first: int, end: int) -> Iterable[Message]:
        """The records of one partition from ``first`` up to ``end`` (exclusive); stops on ``stop``."""
        if first >= end:
            return
        consumer.assign([TopicPartition(self.topic, partition, first)])
        try:
            while not self.stop.is_set():
                batch = consumer.consume(POLL_BATCH, POLL_TIMEOUT)
                for msg in batch:
                    error = msg.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            return
                        raise ResyncError(f"reading {self.topic}[{partition}] failed: {error}")
                    offset = msg.offset() or 0
                    if offset >= end:
                        return
                    yield msg
                    if offset + 1 >= end:
                        return
        finally:
            consumer.unassign()

    def _scan(self, consumer: Consumer, partition: int, checkpoint: Checkpoint) -> dict[bytes, int]:
        """The offset of the latest record of each key of the partition's window."""
        latest: dict[bytes, int] = {}
        for msg in self._records(consumer, partition, checkpoint.start[partition], checkpoint.end[partition]):
            latest[msg.key() or b""] = msg.offset() or 0
        return latest

    def _send(
        self,
        consumer: Consumer,
        partition: int,
        checkpoint: Checkpoint,
        latest: dict[bytes, int],
        output: _Output,
        limiter: RateLimiter,
        path: Path,
    ) -> bool:
        """Sends the partition's latest states from its checkpointed position; False if stopped."""
        codec = absence_codec(self.settings)
        end = checkpoint.end[partition]
        last_save = time.monotonic()

        def save(position: int) -> None:
            output.flush()  # the checkpoint never runs ahead of what Kafka holds
            checkpoint.position[partition] = position
            checkpoint.upserts, checkpoint.deletes = self.state.upserts, self.state.deletes
            checkpoint.save(path)
            self._report(checkpoint, f"sending partition {partition}")

        for msg in self._records(consumer, partition, checkpoint.position[partition], end):
            if self.stop.is_set():
                break
            offset = msg.offset() or 0
            if msg.value() is not None and latest.get(msg.key() or b"") == offset:
                decided = self._decide(codec, msg)
                if decided is not None:
                    if not limiter.acquire(self.stop):
                        break  # this record is not sent: the checkpoint stays before it
                    operation, event = decided
                    output.delivery(replay_delivery(self.destination, event, operation))
                    if operation is Operation.UPSERT:
                        self.state.upserts += 1
                    else:
                        self.state.deletes += 1
            if time.monotonic() - last_save >= CHECKPOINT_INTERVAL:
                save(offset + 1)
                last_save = time.monotonic()
            checkpoint.position[partition] = offset + 1
        if self.stop.is_set():
            save(checkpoint.position[partition])
            return False
        save(end)
        return True

    def _decide(self, codec: AvroCodec, msg: Message) -> tuple[Operation, AbsenceEvent] | None:
        """What to send for an absence's latest record, None for nothing."""
        try:
            event = decode_event(codec, msg)
        except InvalidRecord as exc:  # dead-lettered by the fan-out already
            log.debug("invalid absence record skipped", offset=msg.offset(), reason=exc.reason)
            return None
        if self.request.entity is not None and event.employee.legal_entity_id != self.request.entity:
            return None
        operation = replay_operation(self.destination, event)
        return None if operation is None else (operation, event)


def run_resync(
    settings: Settings,
    request: ResyncRequest,
    *,
    stop: threading.Event | None = None,
    progress: ProgressCallback | None = None,
) -> ResyncProgress:
    """Runs (or resumes) a resync of ``request.destination_id``; returns where it ended
    (``completed`` False when ``stop`` interrupted it: run it again to continue)."""
    destination = load_destination(settings, request.destination_id)
    log.info(
        "resync starting",
        destination=destination.id,
        since=_iso(request.since),
        entity=request.entity,
        rate=request.rate,
    )
    replay = _Replay(settings, destination, request, stop or threading.Event(), progress or (lambda _: None))
    return replay.run()


# -- replay of failed deliveries ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """A delivery in Error, as the projection lists it."""

    delivery_id: str
    destination_id: str
    absence_id: str
    tenant: str


def replay_failed(
    settings: Settings,
    failed: Iterable[FailedDelivery],
    *,
    issued_by: str,
    rate: float = DEFAULT_RATE,
    stop: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """One RETRY command per failed delivery (see the module docstring); returns how many were sent."""
    stop = stop or threading.Event()
    limiter = RateLimiter(rate)
    output = _Output(settings)
    topic = Topics(settings).commands
    codec = codec_for("Command")
    sent = 0
    try:
        for delivery in failed:
            if not limiter.acquire(stop):
                break
            command = Command(
                command_id=uuid.uuid4().hex,
                kind=CommandKind.RETRY,
                delivery_id=delivery.delivery_id,
                destination_id=delivery.destination_id,
                absence_id=delivery.absence_id,
                tenant=delivery.tenant,
                issued_by=issued_by,
                issued_at=now_utc(),
            )
            output.produce(topic, command.key, codec.encode(command.to_avro()))
            sent += 1
            if progress is not None:
                progress(sent)
    finally:
        output.flush()
    log.info("failed deliveries replayed", count=sent, issued_by=issued_by)
    return sent
