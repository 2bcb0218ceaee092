"""The delivery worker's per key (destination, absence) state, and the supersede rule.

Per key the worker remembers the *latest* delivery (the record itself, so an operator's Retry can
re-send it), its attempts, which retry stage it expects next, and the email the destination holds the
absence under (calendar connectors move an event whose email changed) (:class:`KeyState`). The state
lives in the changelog ``delivery-state`` (a :class:`streams.state.DirectStore`), restored on
assignment.

:func:`admit` decides, from that state alone, what becomes of a delivery record read from
``deliveries`` (stage 0) or from a retry topic (stage 1..n):

- a delivery older than the latest is :class:`Stale`: SUPERSEDED, never sent. Older: a lower
  ``version``; or, between the two lanes (one REPLAY, the other not), the same version written
  earlier by the fan-out (``created_at``; in the same millisecond the live one counts as the later).
  The second part keeps the lanes in order: a resync's UPSERT that waited in the replay lane
  (``deliveries.replay``) must not undo a DELETE of the same version that the fan-out wrote after it
  (a destination's narrowed filters) and that went out live first. Within one lane the partition
  keeps the fan-out's order: a same-version delivery is newer (as a resync run twice);
- a new delivery becomes the latest; its state is saved (acknowledged by Kafka) *before* it is sent,
  so after a crash an older delivery's retry can never overwrite it at the destination; the
  previous latest, if still PENDING or in ERROR, is SUPERSEDED (it will never be sent);
- a retry record is sent only if it is the stage the latest delivery expects next; the retry of a
  superseded delivery, a duplicate, or one cancelled by a success or by Mark as processed is
  :class:`Drop`-ped.

So within one destination the changes of one absence go out in order, and only the latest goes out.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass

from schemas.codec import codec_for
from schemas.delivery import Delivery, Operation, Status, Trigger

MANUAL = "MANUAL"
"""Key state status of a delivery an operator marked as processed."""


@dataclass
class KeyState:
    """What the worker remembers per key (destination, absence)."""

    record: str
    """The latest delivery of the key (Avro, base64): what a Retry command re-sends."""
    delivery_id: str
    version: int
    attempts: int
    next_stage: int
    """The retry stage expected next for the latest delivery; 0 = none pending."""
    status: str
    held_email: str | None = None
    """The email the destination holds the absence under: that of the last UPSERT it took (sent, or
    marked as processed); None after a DELETE or when nothing was sent. Calendar connectors move the
    event when the employee's email differs (:attr:`schemas.delivery.Delivery.held_email`)."""
    created_ms: int | None = None
    """The latest delivery's ``created_at`` (ms since the epoch) and whether it is a REPLAY, for
    :func:`admit`'s order of two deliveries of one version from two lanes; None in a state saved
    before they existed (then read from ``record``)."""
    replayed: bool | None = None

    def to_bytes(self) -> bytes:
        """Field by field: ``asdict`` (a recursive copy) showed in the profile, twice per delivery."""
        return json.dumps(
            {
                "record": self.record,
                "delivery_id": self.delivery_id,
                "version": self.version,
                "attempts": self.attempts,
                "next_stage": self.next_stage,
                "status": self.status,
                "held_email": self.held_email,
                "created_ms": self.created_ms,
                "replayed": self.replayed,
            }
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyState:
        fields = json.loads(data)
        # A field added by a later release is ignored (a rolling upgrade, or a rollback, reads it).
        state = cls(**{name: value for name, value in fields.items() if name in _KEY_STATE_FIELDS})
        if "held_email" not in fields and state.status in (Status.SUCCESSFUL.value, MANUAL):
            state.held_email = held_after(state.delivery())  # saved before held_email existed
        return state

    @classmethod
    def of(cls, delivery: Delivery, encoded: bytes) -> KeyState:
        """``encoded``: the delivery's Avro record as received (encoding it again cost CPU per delivery)."""
        record = base64.b64encode(encoded).decode()
        return cls(
            record,
            delivery.delivery_id,
            delivery.version,
            delivery.attempt,
            0,
            Status.PENDING.value,
            created_ms=_ms(delivery),
            replayed=delivery.trigger is Trigger.REPLAY,
        )

    def written(self) -> tuple[int, bool]:
        """The latest delivery's ``created_at`` in ms, and whether it is a REPLAY."""
        if self.created_ms is None or self.replayed is None:
            latest = self.delivery()
            return _ms(latest), latest.trigger is Trigger.REPLAY
        return self.created_ms, self.replayed

    def delivery(self) -> Delivery:
        return Delivery.from_avro(codec_for("Delivery").decode(base64.b64decode(self.record)))


_KEY_STATE_FIELDS = frozenset(f.name for f in dataclasses.fields(KeyState))


def _ms(delivery: Delivery) -> int:
    return int(delivery.created_at.timestamp() * 1000)


def older(delivery: Delivery, state: KeyState) -> bool:
    """Whether ``delivery`` is older than the key's latest (see the module docstring)."""
    if delivery.version != state.version:
        return delivery.version < state.version
    if delivery.delivery_id == state.delivery_id:
        return False
    replayed = delivery.trigger is Trigger.REPLAY
    latest_ms, latest_replayed = state.written()
    if replayed == latest_replayed:
        return False  # one lane: its partition keeps the fan-out's order
    return _ms(delivery) <= latest_ms if replayed else _ms(delivery) < latest_ms


def held_after(delivery: Delivery) -> str | None:
    """The email the destination holds the absence under once ``delivery`` is done."""
    return (delivery.event.employee.email or None) if delivery.operation is Operation.UPSERT else None


@dataclass(frozen=True)
class Stale:
    """Older than the key's latest delivery: SUPERSEDED ("a newer version exists"), not sent."""


@dataclass(frozen=True)
class Drop:
    """A retry record that is not expected: dropped without a status (``reason`` is for the log)."""

    reason: str


@dataclass(frozen=True)
class Send:
    """Make an attempt of the delivery with ``state`` as the key's state."""

    state: KeyState
    save_first: bool
    """A new latest delivery: save ``state`` (acknowledged) before sending."""
    supersedes: KeyState | None
    """The previous latest delivery, PENDING or in ERROR: mark it SUPERSEDED first."""


Admission = Stale | Drop | Send


def admit(state: KeyState | None, delivery: Delivery, stage: int, encoded: bytes) -> Admission:
    """What becomes of ``delivery`` read at retry ``stage`` (0: the ``deliveries`` topic), given the
    key's ``state`` (None: nothing known). ``encoded``: the record as read. Pure: ``state`` is not
    changed."""
    if stage == 0:
        if state is not None and older(delivery, state):
            return Stale()
        previous = None
        if (
            state is not None
            and state.delivery_id != delivery.delivery_id
            and state.status in (Status.PENDING.value, Status.ERROR.value)
        ):
            previous = state
        latest = KeyState.of(delivery, encoded)
        latest.held_email = state.held_email if state is not None else None  # still held there
        return Send(latest, save_first=True, supersedes=previous)
    if state is None:  # state lost (never expected): the retry itself is the best knowledge
        fresh = KeyState.of(delivery, encoded)
        fresh.next_stage = stage
        return Send(fresh, save_first=False, supersedes=None)
    if state.delivery_id != delivery.delivery_id:
        return Drop("retry of a superseded delivery dropped")
    if state.next_stage != stage:
        return Drop("retry not expected (duplicate, cancelled or done)")
    return Send(state, save_first=False, supersedes=None)
