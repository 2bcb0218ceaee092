"""Fan-out: one Delivery per absence change and destination, exactly once.

Reads ``absences`` (key = absence id). Each record is decoded and validated
(:mod:`processors.validation`); a bad one goes to ``absences.invalid``, except one whose writer schema
the registry may give later: its partition pauses and retries it (bounded), the others go on. A good one is checked against
the state of its absence, kept in ``fanout-state`` (:class:`streams.state.StateStore`):

- an event id already seen for the absence is a *duplicate* (a producer retry, a file published twice):
  skipped silently, it is not an error and has no effect;
- otherwise a version equal to or lower than the latest seen is *out-of-order*: dead-lettered.

Then, for the event's tenant only, each destination either *holds* the absence after this change or not:
it holds it when it is enabled, its filters match, the absence is not cancelled or deleted, and (with
``APPROVED_AND_DELETIONS``) the absence is approved. A destination that holds it gets an UPSERT; one
that held it before and no longer does (cancelled, deleted, filters no longer match, employee moved,
back to pending) gets a DELETE, so nothing is left behind. A pending absence is thus never sent to an
``APPROVED_AND_DELETIONS`` destination, a cancelled pending one is not either (it never held it), and an
approved absence is sent whatever the change that made it approved (created already approved,
approved, updated). A disabled destination is paused: it keeps what it holds and gets nothing. A
deleted destination is forgotten (nothing can reach it any more).

When a destination changes (filters narrowed, ...), the absences it holds are swept: those it should
no longer hold get a DELETE. The same sweep runs after each partition assignment, which covers changes
made while the processor was down. New matches are not back-filled here: that is a resync's job.

The second input, ``resync``, carries those back-fills (:mod:`processors.resync`): one request per
absence for one destination (header ``absync-resync-destination``), the absence's event as read from
``absences``, same key, same partition number. Both topics have the same partition count and the
consumer uses the ``range`` assignor, so partition *p* of both comes to the same worker, with the state
of partition *p*: the fan-out stays the single writer of which destination holds what, and a
cancellation after a resync reaches the destination it was resynced to. For a request the fan-out
takes its latest knowledge of the absence (the stored event when it is newer than the request's, which
is why the latest event is always stored), and for that destination only: an UPSERT if it should hold
it (and it now holds it), a DELETE if the absence is removed (cancelled, deleted) and matches the
destination (:func:`replay_operation`), else nothing. A request is not a change: the version and the
recent event ids are left as they are. Its deliveries have trigger REPLAY and go to the replay lane,
``deliveries.replay`` (same key and partitioning), which the delivery worker reads only when live
work leaves room (:mod:`processors.delivery.replay_lane`): a resync never delays live changes.

Every other Delivery goes to ``deliveries`` keyed ``<destination>|<absence>`` with a deterministic id, with a
PENDING DeliveryStatus to ``delivery-status``; outputs, state and input offsets commit in one
transaction.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka import Message, TopicPartition

from connectors.registry import receives_changes
from processors.validation import (
    ErrorKind,
    InvalidRecord,
    RegistryPatience,
    SchemaNotYetAvailable,
    absence_codec,
    dead_letter,
    decode_event,
)
from schemas.codec import AvroCodec, codec_for
from schemas.delivery import Delivery, DeliveryStatus, Operation, Status, Trigger, delivery_id_for, now_utc
from schemas.destination import ChangeSelection, Destination
from schemas.errors import SchemaError
from schemas.models import AbsenceEvent, AbsenceStatus
from streams.destinations import DestinationTable
from streams.processor import Output, Processor, ProcessorComponent, ProcessorRuntime
from streams.records import coordinates, header
from streams.settings import Settings
from streams.state import StateStore
from streams.topics import Topics

log = structlog.get_logger(__name__)

RECENT_EVENT_IDS = 32
"""Event ids remembered per absence to recognise duplicates."""
RESYNC_DESTINATION_HEADER = "absync-resync-destination"
"""The header of a ``resync`` record naming the destination it is for."""
TABLE_LAG = 20.0
"""Seconds a resync request waits for this process's destinations table to learn of a destination
the resync found (both read the same topic; this one may be behind on a loaded machine). Waited once
per unknown id: a destination deleted since costs one pause of the fan-out, well inside the
transaction timeout (60 s, streams/kafka.py)."""


@dataclass(slots=True)
class AbsenceState:
    """What the fan-out remembers of one absence (stored as JSON in ``fanout-state``)."""

    version: int = 0
    held: set[str] = field(default_factory=set)
    recent: list[str] = field(default_factory=list)
    event: bytes | None = None
    """The latest event as it arrived (Avro): the sweep decodes it, and so does a resync request
    older than it (a destination added later needs the latest state, held by anyone or not); kept as
    bytes so that the common path never re-encodes it."""

    def to_bytes(self) -> bytes:
        data: dict[str, Any] = {
            "version": self.version,
            "held": sorted(self.held),
            "recent": self.recent,
            "event": base64.b64encode(self.event).decode() if self.event is not None else None,
        }
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> AbsenceState:
        data = json.loads(raw)
        event = base64.b64decode(data["event"]) if data.get("event") else None
        return cls(int(data["version"]), set(data["held"]), list(data["recent"]), event)


def should_hold(destination: Destination, event: AbsenceEvent) -> bool:
    """Whether the destination should hold the absence as this event leaves it."""
    if not destination.matches(event) or event.change.removes:
        return False
    status = event.absence.status
    if status.removed:  # cancelled or refused: shown nowhere
        return False
    return destination.changes == ChangeSelection.ALL or status == AbsenceStatus.APPROVED


def replay_operation(destination: Destination, event: AbsenceEvent) -> Operation | None:
    """What a resync sends the destination for this latest state, None for nothing: an UPSERT if it
    should hold it; a DELETE if the absence is removed and matches the destination (it may have been
    sent before its removal was missed; every connector treats the DELETE of an unknown absence as
    done). An absence that stopped matching the filters gets nothing: the sweep handles filter changes."""
    if should_hold(destination, event):
        return Operation.UPSERT
    removed = event.change.removes or event.absence.status.removed
    return Operation.DELETE if removed and destination.matches(event) else None


def delivery_for(
    destination: Destination, event: AbsenceEvent, operation: Operation, trigger: Trigger = Trigger.AUTOMATIC
) -> Delivery:
    """The delivery of one event to one destination. Its id depends only on (destination, event,
    operation, trigger): a record handled again, or a resync run twice, yields the same ids."""
    salt = operation.value if trigger is Trigger.AUTOMATIC else f"{trigger}:{operation}"
    now = now_utc()
    return Delivery(
        delivery_id=delivery_id_for(destination.id, event.event_id, salt),
        destination_id=destination.id,
        tenant=event.tenant,
        absence_id=event.absence.id,
        version=event.version,
        operation=operation,
        event=event,
        due_at=now,
        created_at=now,
        trigger=trigger,
    )


class FanoutProcessor(Processor):
    name = "fanout"

    def __init__(self, settings: Settings, table: DestinationTable) -> None:
        topics = Topics(settings)
        self._settings = settings
        self.topics = [topics.absences, topics.resync]
        self.background_topics = [topics.resync]  # a resync never holds back a live change
        self._topics = topics
        self._table = table
        self._codec: AvroCodec = absence_codec(settings)
        self._patience = RegistryPatience.of(settings)
        self._state = StateStore(settings, topics.fanout_state)
        self.stores = [self._state]
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()
        self._unknown: set[str] = set()
        """Destinations of resync requests that the table did not learn of in TABLE_LAG (deleted), or
        ``id@revision`` of a disabled one that stayed disabled that long."""
        table.on_change(self._destination_changed)

    def open(self) -> None:
        self._table.start()
        self._table.wait_ready(60)

    def close(self) -> None:
        self._table.close()

    # -- records ------------------------------------------------------------------------------
    def handle(self, msg: Message) -> list[Output]:
        if msg.value() is None and msg.topic() == self._topics.absences and msg.key():
            return self._erased(msg)
        event = decode_event(self._codec, msg, self._settings.max_event_bytes, self._patience)
        key = _state_key(event)
        topic, partition, _ = coordinates(msg)
        if topic == self._topics.resync:
            return self._resync(msg, event, partition, key)
        raw = self._state.get(partition, key)
        state = AbsenceState.from_bytes(raw) if raw is not None else AbsenceState()
        bound = log.bind(event_id=event.event_id, absence_id=event.absence.id, version=event.version)
        if event.event_id in state.recent:
            bound.info("duplicate event skipped")
            return []
        if event.version <= state.version:
            raise InvalidRecord(
                ErrorKind.OUT_OF_ORDER,
                f"version going backwards: {event.version} after {state.version} for absence {event.absence.id}",
                event.event_id,
            )
        outputs = self._fan_out(event, state)
        state.version = event.version
        state.recent = [*state.recent, event.event_id][-RECENT_EVENT_IDS:]
        state.event = msg.value()
        self._state.put(partition, key, state.to_bytes())
        bound.debug("absence fanned out", deliveries=len(outputs) // 2, holders=sorted(state.held))
        return outputs

    def _erased(self, msg: Message) -> list[Output]:
        """A tombstone on ``absences`` (``absync erase``, docs/privacy.md): the absence's state (its
        latest event, personal data) is dropped, its changelog gets a tombstone, and nothing is sent:
        an erasure removes absync's copy, it is not a cancellation."""
        key = (msg.key() or b"").decode(errors="replace")
        _, partition, _ = coordinates(msg)
        if self._state.get(partition, key) is not None:
            self._state.delete(partition, key)
            log.info("absence erased: its fan-out state is dropped", partition=partition)
        return []

    def dead_letter(self, msg: Message, exc: Exception) -> list[Output]:
        if isinstance(exc, SchemaNotYetAvailable):
            kind, reason, event_id = exc.kind, exc.give_up(), None
        elif isinstance(exc, InvalidRecord):
            kind, reason, event_id = exc.kind, exc.reason, exc.event_id
        else:
            kind, reason, event_id = ErrorKind.PROCESSING, f"{type(exc).__name__}: {exc}", None
        log.warning(
            "bad absence record sent to the dead letter",
            event_id=event_id,
            kind=kind.value,
            reason=reason,
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
            exc_info=exc if kind == ErrorKind.PROCESSING else None,
        )
        return [dead_letter(self._topics.invalid, msg, kind, reason, self._settings.max_record_bytes)]

    def _fan_out(self, event: AbsenceEvent, state: AbsenceState) -> list[Output]:
        """Deliveries for one change; updates ``state.held``."""
        outputs: list[Output] = []
        held: set[str] = set()
        for destination in sorted(self._table.all(event.tenant), key=lambda d: d.id):
            if not receives_changes(destination):
                continue  # the Slack post reads the daily projection instead
            if not destination.enabled:
                if destination.id in state.held:
                    held.add(destination.id)
            elif should_hold(destination, event):
                outputs += self._delivery(destination, event, Operation.UPSERT)
                held.add(destination.id)
            elif destination.id in state.held:
                outputs += self._delivery(destination, event, Operation.DELETE)
        state.held = held
        return outputs

    def _resync(self, msg: Message, request: AbsenceEvent, partition: int, key: str) -> list[Output]:
        """One resync request (see the module docstring): decides for its destination only."""
        raw_id = header(msg, RESYNC_DESTINATION_HEADER)
        destination_id = raw_id.decode(errors="replace") if raw_id is not None else None
        if destination_id is None:
            raise InvalidRecord(
                ErrorKind.INVALID,
                f"resync record without a {RESYNC_DESTINATION_HEADER} header",
                request.event_id,
            )
        bound = log.bind(destination=destination_id, absence_id=request.absence.id, version=request.version)
        destination = self._resync_destination(destination_id)
        if destination is None or not destination.enabled or not receives_changes(destination):
            bound.warning("resync request for an unknown or disabled destination skipped")
            return []
        if destination.tenant != request.tenant:
            bound.warning("resync request of another tenant skipped", tenant=request.tenant)
            return []
        raw = self._state.get(partition, key)
        state = AbsenceState.from_bytes(raw) if raw is not None else AbsenceState()
        event = request
        if state.version > request.version and state.event is not None:
            event = AbsenceEvent.from_avro(self._codec.decode(state.event))
        operation = replay_operation(destination, event)
        if operation is None:
            return []
        held = (
            state.held | {destination.id} if operation is Operation.UPSERT else state.held - {destination.id}
        )
        if held != state.held:
            state.held = held
            self._state.put(partition, key, state.to_bytes())
        bound.debug("resync request decided", operation=operation.value, sent_version=event.version)
        return self._delivery(destination, event, operation, Trigger.REPLAY)

    def _resync_destination(self, destination_id: str) -> Destination | None:
        """The destination of a resync request; waits up to TABLE_LAG for the table to learn of it
        or of its enabling (the catch-up resync of an enable follows the enabling write at once),
        once per unknown id or disabled revision."""

        def settled(found: Destination | None) -> bool:
            return found is not None and found.enabled

        destination = self._table.get(destination_id)
        wait_key = destination_id if destination is None else f"{destination_id}@{destination.revision}"
        if settled(destination) or wait_key in self._unknown:
            return destination
        deadline = time.monotonic() + TABLE_LAG
        while not settled(destination) and time.monotonic() < deadline:
            time.sleep(0.05)
            destination = self._table.get(destination_id)
        if not settled(destination):
            self._unknown.add(wait_key)
        return destination

    def _delivery(
        self,
        destination: Destination,
        event: AbsenceEvent,
        operation: Operation,
        trigger: Trigger = Trigger.AUTOMATIC,
    ) -> list[Output]:
        delivery = delivery_for(destination, event, operation, trigger)
        status = DeliveryStatus.for_delivery(delivery, Status.PENDING, 0, occurred_at=delivery.created_at)
        return [
            Output(
                self._topics.replay if trigger is Trigger.REPLAY else self._topics.deliveries,
                delivery.key.encode(),
                codec_for("Delivery").encode(delivery.to_avro()),
            ),
            Output(
                self._topics.status,
                delivery.delivery_id.encode(),
                codec_for("DeliveryStatus").encode(status.to_avro()),
            ),
        ]

    # -- destination changes ------------------------------------------------------------------
    def _destination_changed(self, destination_id: str, _: Destination | None) -> None:
        """From the table's thread: remember to sweep the absences this destination holds."""
        with self._dirty_lock:
            self._dirty.add(destination_id)

    def on_assign(self, partitions: list[TopicPartition]) -> None:
        with self._dirty_lock:
            self._dirty.update(d.id for d in self._table.all())

    def punctuate(self) -> list[Output]:
        """Sweeps the absences held by changed destinations: DELETE where they should no longer hold."""
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
        outputs: list[Output] = []
        if not dirty:
            return outputs
        for partition in self._state.partitions():
            for key, raw in self._state.items(partition):
                state = AbsenceState.from_bytes(raw)
                changed = state.held & dirty
                if not changed or state.event is None:
                    continue
                try:
                    event = AbsenceEvent.from_avro(self._codec.decode(state.event))
                except (SchemaError, KeyError, TypeError, ValueError) as exc:  # never stops the sweep
                    log.error("stored event unreadable: not swept", state_key=key, error=str(exc))
                    continue
                held_before = set(state.held)
                for destination_id in sorted(changed):
                    destination = self._table.get(destination_id)
                    if destination is None:
                        state.held.discard(destination_id)
                    elif destination.enabled and not should_hold(destination, event):
                        outputs += self._delivery(destination, event, Operation.DELETE)
                        state.held.discard(destination_id)
                if state.held != held_before:
                    self._state.put(partition, key, state.to_bytes())
        if outputs:
            log.info("destination change swept", destinations=sorted(dirty), deliveries=len(outputs) // 2)
        return outputs


def _state_key(event: AbsenceEvent) -> str:
    """Absence ids are unique per tenant: the tenant is part of the state key."""
    return f"{event.tenant}|{event.absence.id}"


def build(settings: Settings, worker_id: str | None = None) -> ProcessorComponent:
    """The fan-out component for ``absync run`` (name "fanout")."""
    processor = FanoutProcessor(settings, DestinationTable(settings))
    return ProcessorComponent("fanout", ProcessorRuntime(settings, processor, worker_id=worker_id).run)
