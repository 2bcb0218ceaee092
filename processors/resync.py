"""Bulk resync by replaying ``absences``.

Resync (:func:`run_resync`): brings one destination to what it should hold *now*, e.g. a destination
added after the absences were published (the fan-out does not back-fill new matches), or one that
lost its data. ``absences`` is compacted by ``<tenant>|<absence id>``, so the latest state of every
absence of every tenant is always there (older history may be gone). The replay reads the topic from
the offsets of ``changed_since`` (a Kafka write time: ``offsets_for_times``; from the beginning
without it) up to the end offsets taken when the resync started, and sends each absence once, from its latest state as read, as a *resync request* to the
``resync`` topic: same key, same partition number, the value exactly as read, and a header naming the
destination (:data:`processors.fanout.RESYNC_DESTINATION_HEADER`).

The fan-out decides what the destination gets (:mod:`processors.fanout`): it is the single writer of
which destination holds which absence, so a cancellation or deletion that comes after the resync
reaches the destination like any live change. It sends an UPSERT when the destination should hold the
absence, a DELETE when the absence is removed (cancelled, deleted) and matches the destination, else
nothing, from its latest knowledge of the absence (a live change newer than the snapshot wins); trigger
REPLAY, a deterministic id (destination, event id, REPLAY, operation), a PENDING status. Idempotence: a
second run yields the same ids, which every connector passes on as its idempotency key
(``webhook-id``...), so the destination sees no second effect. Only removals inside the replayed window
are sent (a ``changed_since`` bounds them).

Here only a cheap pre-filter runs: absences of another tenant, not matching the destination's
filters or outside the request's scope (:class:`processors.resync_filter.AbsenceScope`: ending on or
after a date, legal entity, department) get no request. ``upserts`` and ``deletes`` count what the states as read
call for (:func:`processors.fanout.replay_operation`); a request for a matching absence that calls for
nothing (pending, for an approved-only destination) is still sent, in case the fan-out knows a newer
state.

Two passes per partition keep memory bounded and send every absence once: the scan records the
offset of the latest record of each absence (its key; for a record written before the upgrade, keyed
by the absence id alone, the tenant and id read from its value); the send pass re-reads the partition
and sends only those.
Resumable: the send position per partition (and the window) is checkpointed to
``<data_dir>/resync/<destination>.json`` after the records before it are acknowledged by Kafka; a
new run with the same parameters continues from it (a partition interrupted mid-way is re-scanned,
then sent from its position). The file is removed once the resync completes. Rate-limited: at most
``rate`` requests per second, so the fan-out and the worker keep room for live changes, and never
more than the destination's own ``rate_limit`` (the delivery worker holds that limit in any case).

Replay of failed deliveries: :mod:`processors.replay_failed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from connectors.registry import receives_changes
from processors.fanout import replay_operation
from processors.resync_checkpoint import Checkpoint, iso
from processors.resync_filter import AbsenceScope, absence_key_of
from processors.resync_io import DEFAULT_RATE, KAFKA_TIMEOUT, Output, RateLimiter, ResyncError
from processors.validation import (
    InvalidRecord,
    RegistryPatience,
    SchemaNotYetAvailable,
    absence_codec,
    decode_event,
)
from schemas.codec import AvroCodec
from schemas.delivery import Operation
from schemas.destination import Destination
from schemas.models import AbsenceEvent
from streams.destinations import DestinationTable
from streams.kafka import group_id, make_consumer
from streams.settings import Settings
from streams.topics import Topics

__all__ = [
    "DEFAULT_RATE",
    "ResyncError",
    "ResyncProgress",
    "ResyncRequest",
    "catch_up_request",
    "enabled_again",
    "load_destination",
    "run_resync",
]

log = structlog.get_logger(__name__)

CHECKPOINT_INTERVAL = 1.0
"""Seconds between checkpoints of the send position."""
POLL_BATCH = 1000
POLL_TIMEOUT = 0.1
"""Seconds a read waits for more records: the last batch of a partition waits this long."""
FETCH_WAIT_MS = 10
"""How long the broker holds a fetch that found nothing new (librdkafka's default is 500 ms). The
replay reads a closed window partition by partition: a fetch long-polling at the end of the partition
just read held back the first fetch of the next one (0.3 to 0.5 s per partition and pass, measured)."""


@dataclass(frozen=True, slots=True)
class ResyncRequest:
    destination_id: str
    changed_since: dt.datetime | None = None
    """Replay the records written to Kafka at or after this time (None: the whole topic). A write
    time, not the absence's date: that is ``scope.ending_on_or_after``."""
    scope: AbsenceScope = field(default_factory=AbsenceScope)
    """Which absences: ending on or after a date, of a legal entity, of a department."""
    rate: float = DEFAULT_RATE

    def parameters(self) -> dict[str, str | None]:
        """What this request replays, as text (its checkpoint is reused only for the same)."""
        return {"changed_since": iso(self.changed_since), **self.scope.describe()}


@dataclass(slots=True)
class ResyncProgress:
    """Where a resync is: ``done``/``total`` count records (offsets) of the send pass over the whole
    window; each record done is sent, skipped or failed. Counts include a resumed run's earlier part
    (from its checkpoint); ``seconds``, :attr:`rate` and :attr:`seconds_left` are this run's."""

    phase: str = "starting"
    done: int = 0
    total: int = 0
    upserts: int = 0
    deletes: int = 0
    sent: int = 0
    """Resync requests produced: one per absence whose latest state passed the pre-filter."""
    skipped: int = 0
    """Records not sent: older states of an absence (sent from its latest), erasures (tombstones),
    absences of another tenant or outside the destination's filters or the request's scope."""
    failed: int = 0
    """Records that could not be read (invalid: the fan-out dead-letters them with their reason)."""
    resumed: bool = False
    completed: bool = False
    seconds: float = 0.0
    """Seconds since this run started (frozen at its end)."""
    done_before: int = 0
    """``done`` when this run started (a resumed run's earlier part, not in :attr:`rate`)."""

    @property
    def rate(self) -> float:
        """Records done per second in this run (scan passes included: the average that holds)."""
        return (self.done - self.done_before) / self.seconds if self.seconds > 0 else 0.0

    @property
    def seconds_left(self) -> float | None:
        """Estimated seconds until the end at :attr:`rate` (None before anything is done)."""
        if self.completed:
            return 0.0
        rate = self.rate
        return (self.total - self.done) / rate if rate > 0 else None


ProgressCallback = Callable[[ResyncProgress], None]


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
    if not receives_changes(destination):
        raise ResyncError(f"destination {destination_id!r} does not receive absence changes")
    return destination


@dataclass
class _Replay:
    """One run of a resync (see :func:`run_resync`)."""

    settings: Settings
    destination: Destination
    request: ResyncRequest
    stop: threading.Event
    progress: ProgressCallback
    topic: str = ""
    """Where the absences are read."""
    requests: str = ""
    """Where the resync requests go."""
    state: ResyncProgress = field(default_factory=ResyncProgress)
    started: float = field(default_factory=time.monotonic)

    def run(self) -> ResyncProgress:
        topics = Topics(self.settings)
        self.topic, self.requests = topics.absences, topics.resync
        path = Checkpoint.path_for(self.settings, self.destination.id)
        consumer = make_consumer(
            self.settings,
            group_id(self.settings, f"resync-{self.destination.id}"),
            **{"enable.partition.eof": True, "fetch.wait.max.ms": FETCH_WAIT_MS},
        )
        output = Output(self.settings)
        try:
            self._check_partitions(consumer)
            checkpoint = Checkpoint.load(path, self.request)
            self.state.resumed = checkpoint is not None
            if checkpoint is None:
                checkpoint = self._window(consumer)
            self.state.upserts, self.state.deletes = checkpoint.upserts, checkpoint.deletes
            self.state.sent, self.state.skipped = checkpoint.sent, checkpoint.skipped
            self.state.failed = checkpoint.failed
            self.state.total = sum(checkpoint.end[p] - checkpoint.start[p] for p in checkpoint.start)
            self.state.done_before = self._done(checkpoint)
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

    def _counts(self) -> dict[str, int | float]:
        s = self.state
        return {
            "upserts": s.upserts,
            "deletes": s.deletes,
            "sent": s.sent,
            "skipped": s.skipped,
            "failed": s.failed,
            "seconds": round(s.seconds, 1),
        }

    @staticmethod
    def _done(checkpoint: Checkpoint) -> int:
        return sum(checkpoint.position[p] - checkpoint.start[p] for p in checkpoint.start)

    def _report(self, checkpoint: Checkpoint, phase: str) -> None:
        self.state.phase = phase
        self.state.done = self._done(checkpoint)
        self.state.seconds = time.monotonic() - self.started
        self.progress(self.state)

    def _check_partitions(self, consumer: Consumer) -> None:
        """A request goes to the partition number of its absence (the fan-out reads both with the
        state of that partition): the two topics must have the same partition count."""
        metadata = consumer.list_topics(timeout=KAFKA_TIMEOUT).topics
        counts = {t: len(metadata[t].partitions) if t in metadata else 0 for t in (self.topic, self.requests)}
        if counts[self.requests] != counts[self.topic]:
            raise ResyncError(
                f"{self.requests} has {counts[self.requests]} partition(s) and {self.topic} "
                f"{counts[self.topic]}: they must have the same count (see `absync topics create`)"
            )

    def _window(self, consumer: Consumer) -> Checkpoint:
        """Start offsets (of ``changed_since``, else the first), end offsets (now) per partition."""
        metadata = consumer.list_topics(self.topic, timeout=KAFKA_TIMEOUT).topics[self.topic]
        partitions = sorted(metadata.partitions)
        marks = {
            p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=KAFKA_TIMEOUT)
            for p in partitions
        }
        start = {p: low for p, (low, _) in marks.items()}
        end = {p: high for p, (_, high) in marks.items()}
        if self.request.changed_since is not None:
            ms = int(self.request.changed_since.timestamp() * 1000)
            found = consumer.offsets_for_times(
                [TopicPartition(self.topic, p, ms) for p in partitions], timeout=KAFKA_TIMEOUT
            )
            # -1: no record at or after `changed_since` in that partition: nothing to replay there.
            start = {tp.partition: tp.offset if tp.offset >= 0 else end[tp.partition] for tp in found}
        return Checkpoint(
            destination_id=self.destination.id,
            parameters=self.request.parameters(),
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
        """The offset of the latest record of each absence of the partition's window."""
        latest: dict[bytes, int] = {}
        codec = absence_codec(self.settings)
        for msg in self._records(consumer, partition, checkpoint.start[partition], checkpoint.end[partition]):
            latest[absence_key_of(codec, msg)] = msg.offset() or 0
        return latest

    def _send(
        self,
        consumer: Consumer,
        partition: int,
        checkpoint: Checkpoint,
        latest: dict[bytes, int],
        output: Output,
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
            checkpoint.sent, checkpoint.skipped = self.state.sent, self.state.skipped
            checkpoint.failed = self.state.failed
            checkpoint.save(path)
            self._report(checkpoint, f"sending partition {partition}")

        for msg in self._records(consumer, partition, checkpoint.position[partition], end):
            if self.stop.is_set():
                break
            offset = msg.offset() or 0
            if msg.value() is None or latest.get(absence_key_of(codec, msg)) != offset:
                self.state.skipped += 1  # an erasure, or an older state of an absence sent from its latest
            elif (event := self._wanted(codec, msg)) is not None:
                if not limiter.acquire(self.stop):
                    break  # this record is not sent: the checkpoint stays before it
                output.request(self.requests, msg, self.destination.id)
                self.state.sent += 1
                operation = replay_operation(self.destination, event)
                if operation is Operation.UPSERT:
                    self.state.upserts += 1
                elif operation is Operation.DELETE:
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

    def _wanted(self, codec: AvroCodec, msg: Message) -> AbsenceEvent | None:
        """The absence of a latest record if it passes the pre-filter (see the module docstring);
        None counted as failed (unreadable) or skipped (filtered out).

        A record whose writer schema the registry cannot give yet is asked again with back-off, as
        the fan-out does; past the same patience the resync stops with an error (run it again to
        resume from its checkpoint): it never skips a record it could not read.
        """
        patience = RegistryPatience.of(self.settings)
        waited, pause = 0.0, 0.5
        while True:
            try:
                event = decode_event(codec, msg, self.settings.max_event_bytes, patience)
                break
            except SchemaNotYetAvailable as exc:
                if waited >= exc.give_up_after or self.stop.is_set():
                    raise ResyncError(
                        f"the schema of {msg.topic()}[{msg.partition()}]@{msg.offset()} is not available "
                        f"after {waited:.0f}s ({exc.reason}); run the resync again to resume"
                    ) from exc
                self.stop.wait(pause)
                waited, pause = waited + pause, min(pause * 2, 30.0)
            except InvalidRecord as exc:  # dead-lettered by the fan-out already
                log.debug("invalid absence record skipped", offset=msg.offset(), reason=exc.reason)
                self.state.failed += 1
                return None
        if self.request.scope.accepts(event) and self.destination.matches(event):
            return event
        self.state.skipped += 1
        return None


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
    if destination.rate_limit is not None and request.rate > destination.rate_limit:
        # No faster than the destination takes them: a backlog beyond its limit would only wait in
        # the delivery worker's buffer (and fill it, pausing every destination's intake).
        request = dataclasses.replace(request, rate=destination.rate_limit)
    log.info(
        "resync starting",
        destination=destination.id,
        **request.parameters(),
        rate=request.rate,
    )
    replay = _Replay(settings, destination, request, stop or threading.Event(), progress or (lambda _: None))
    return replay.run()


def catch_up_request(before: Destination) -> ResyncRequest:
    """The resync that brings a destination enabled again to what it should hold now: the absences
    changed since it was disabled (all of them if that time was not recorded)."""
    return ResyncRequest(before.id, changed_since=before.disabled_at)


def enabled_again(before: Destination | None, after: Destination) -> bool:
    """Whether a write is the transition disabled -> enabled of a destination that gets changes."""
    return before is not None and not before.enabled and after.enabled and receives_changes(after)
