"""What arrives on ``absences`` is checked here; what fails goes to ``absences.invalid``.

A bad record is never dropped in silence and never stops the pipeline: it is copied to the dead-letter
topic with its ORIGINAL key, value and headers, plus headers saying why:

- ``absync-error-kind``: ``too-large`` (an encoded event over ``ABSYNC_MAX_EVENT_BYTES``, 64 kB by
  default: not even decoded), ``decode`` (not Avro we can read), ``unknown-schema`` (a schema
  fingerprint or registry id we do not know; a registry id is first retried, see below), ``invalid``
  (a well-formed event breaking a rule: end before start, an email without @, a text field too long or
  holding a control character, a key that is not the absence's...), ``out-of-order`` (a version not
  above the latest seen for the absence), or
  ``processing`` (an unexpected error while handling a good record: a bug, kept for replay);
- ``absync-reason``: the reason in clear text;
- ``absync-source-topic``, ``absync-source-partition``, ``absync-source-offset``: where it came from.

A record in the Confluent wire format whose writer schema cannot be had *now* is not dead-lettered at
once: with a :class:`RegistryPatience`, :func:`decode_event` raises :class:`SchemaNotYetAvailable` (a
:class:`streams.retry.RetryLater`), so the runtime pauses its partition and retries it with back-off, for
up to ``schema_registry_retry_for`` seconds while the registry does not answer (an outage), or
``schema_registry_unknown_id_retry_for`` seconds while it answers that the id does not exist (a
registry replica lagging behind, or a producer on another registry); then the record is dead-lettered
as ``unknown-schema`` with the last error, the attempts and the time waited. An id given up on that
way is given up at once for the next hour while the registry still says it does not exist (a producer
pointed at another registry must not cost every one of its records the whole wait). Schemas are cached by id
(:mod:`schemas.registry`): records of an id seen once never wait for the registry again.

A copy that would be over ``ABSYNC_MAX_RECORD_BYTES`` is truncated, with the original size and SHA-256
(:mod:`streams.deadletter`): a dead letter can always be written, so no record stops the fan-out.

The record key is ``<tenant>|<absence id>``; the absence id alone (the key before tenants were part of
it) is still accepted, so records written before the upgrade stay readable.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Message

from processors import ProcessorError
from schemas.codec import AvroCodec, codec_for
from schemas.errors import (
    DecodeError,
    SchemaNotFoundError,
    SchemaUnavailableError,
    UnknownSchemaIdError,
    ValidationError,
)
from schemas.models import AbsenceEvent, validate
from streams.deadletter import as_headers, dead_letter_copy
from streams.output import Output
from streams.records import coordinates
from streams.retry import RetryLater
from streams.schema_registry import schema_registry
from streams.settings import Settings


class ErrorKind(enum.StrEnum):
    TOO_LARGE = "too-large"
    DECODE = "decode"
    UNKNOWN_SCHEMA = "unknown-schema"
    INVALID = "invalid"
    OUT_OF_ORDER = "out-of-order"
    PROCESSING = "processing"


class InvalidRecord(ProcessorError):
    """A record that goes to the dead letter, with its kind and a clear reason."""

    def __init__(self, kind: ErrorKind, reason: str, event_id: str | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.event_id = event_id


class SchemaNotYetAvailable(InvalidRecord, RetryLater):
    """A record whose writer schema the registry may give later: retried, then dead-lettered."""

    def __init__(
        self, reason: str, give_up_after: float, on_give_up: Callable[[], None] | None = None
    ) -> None:
        RetryLater.__init__(self, reason, give_up_after=give_up_after)  # sets the message and reason
        self.kind = ErrorKind.UNKNOWN_SCHEMA
        self.event_id = None
        self._on_give_up = on_give_up

    def give_up(self) -> str:
        """Called when the runtime gave up on the record; returns the dead-letter reason."""
        if self._on_give_up is not None:
            self._on_give_up()
        return f"{self.reason} (still after {self.attempts} attempts over {self.waited:.0f}s)"


@dataclass(frozen=True, slots=True)
class RegistryPatience:
    """How long a record waits for its writer schema (seconds), see the module docstring."""

    unavailable: float
    unknown_id: float

    @classmethod
    def of(cls, settings: Settings) -> RegistryPatience:
        return cls(settings.schema_registry_retry_for, settings.schema_registry_unknown_id_retry_for)


def absence_codec(settings: Settings) -> AvroCodec:
    """The AbsenceEvent codec; it also reads the Confluent wire format when a registry is set."""
    registry = schema_registry(settings)
    return codec_for("AbsenceEvent") if registry is None else AvroCodec("AbsenceEvent", registry)


def decode_event(
    codec: AvroCodec, msg: Message, max_bytes: int, patience: RegistryPatience | None = None
) -> AbsenceEvent:
    """Decodes and validates one record of ``absences``; raises :class:`InvalidRecord` (with
    ``patience``, :class:`SchemaNotYetAvailable` for a writer schema the registry may give later).

    A value over ``max_bytes`` (``ABSYNC_MAX_EVENT_BYTES``) is refused before decoding. Beyond
    :func:`schemas.models.validate`, the record key must be the event's ``<tenant>|<absence id>`` (or,
    written before the upgrade, its absence id): partitioning (and so the order of one absence's
    changes) depends on it.
    """
    value = msg.value()
    if value is not None and len(value) > max_bytes:
        raise InvalidRecord(
            ErrorKind.TOO_LARGE,
            f"the event is {len(value)} bytes, more than ABSYNC_MAX_EVENT_BYTES ({max_bytes})",
        )
    try:
        record = codec.decode(value)
    except UnknownSchemaIdError as exc:
        if patience is None or exc.given_up:
            reason = (
                f"{exc} (a record of this id waited its whole budget lately)" if exc.given_up else str(exc)
            )
            raise InvalidRecord(ErrorKind.UNKNOWN_SCHEMA, reason) from exc
        registry, schema_id = codec.registry, exc.schema_id
        on_give_up = (lambda: registry.give_up(schema_id)) if registry is not None else None
        raise SchemaNotYetAvailable(str(exc), patience.unknown_id, on_give_up) from exc
    except SchemaUnavailableError as exc:
        if patience is None:
            raise InvalidRecord(ErrorKind.UNKNOWN_SCHEMA, str(exc)) from exc
        raise SchemaNotYetAvailable(str(exc), patience.unavailable) from exc
    except SchemaNotFoundError as exc:
        raise InvalidRecord(ErrorKind.UNKNOWN_SCHEMA, str(exc)) from exc
    except DecodeError as exc:
        raise InvalidRecord(ErrorKind.DECODE, str(exc)) from exc
    event_id = record.get("event_id") if isinstance(record.get("event_id"), str) else None
    try:
        event = AbsenceEvent.from_avro(record)
        validate(event)
    except (ValidationError, KeyError, TypeError, ValueError) as exc:
        raise InvalidRecord(ErrorKind.INVALID, str(exc), event_id) from exc
    key = msg.key()
    text = key.decode(errors="replace") if key is not None else None
    if text not in (event.key, event.legacy_key):
        shown = repr(key[:300]) + ("..." if len(key) > 300 else "") if key is not None else "None"
        raise InvalidRecord(
            ErrorKind.INVALID,
            f"record key {shown} is not {event.key!r} (tenant|absence id) nor the absence id",
            event.event_id,
        )
    return event


def dead_letter(dead_letter_topic: str, msg: Message, kind: ErrorKind, reason: str, max_bytes: int) -> Output:
    """The dead-letter copy of ``msg``: original key, value and headers, plus the reason headers;
    truncated (with size and SHA-256) when it would be over ``max_bytes`` (ABSYNC_MAX_RECORD_BYTES)."""
    return dead_letter_copy(
        dead_letter_topic,
        key=msg.key(),
        value=msg.value(),
        headers=as_headers(msg.headers()),
        source=coordinates(msg),
        kind=kind.value,
        reason=reason,
        max_bytes=max_bytes,
    )
