"""What arrives on ``absences`` is checked here; what fails goes to ``absences.invalid``.

A bad record is never dropped in silence and never stops the pipeline: it is copied to the dead-letter
topic with its ORIGINAL key, value and headers, plus headers saying why:

- ``absync-error-kind``: ``decode`` (not Avro we can read), ``unknown-schema`` (a schema fingerprint or
  registry id we do not know), ``invalid`` (a well-formed event breaking a rule: end before start,
  missing email...), ``out-of-order`` (a version not above the latest seen for the absence), or
  ``processing`` (an unexpected error while handling a good record: a bug, kept for replay);
- ``absync-reason``: the reason in clear text;
- ``absync-source-topic``, ``absync-source-partition``, ``absync-source-offset``: where it came from.
"""

from __future__ import annotations

import enum

from confluent_kafka import Message

from processors import ProcessorError
from schemas.codec import AvroCodec, SchemaRegistryResolver, codec_for
from schemas.errors import DecodeError, SchemaNotFoundError, ValidationError
from schemas.models import AbsenceEvent, validate
from streams.processor import Output
from streams.records import coordinates
from streams.settings import Settings


class ErrorKind(enum.StrEnum):
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


def absence_codec(settings: Settings) -> AvroCodec:
    """The AbsenceEvent codec; it also reads the Confluent wire format when a registry is set."""
    if settings.schema_registry_url:
        return AvroCodec("AbsenceEvent", SchemaRegistryResolver(settings.schema_registry_url))
    return codec_for("AbsenceEvent")


def decode_event(codec: AvroCodec, msg: Message) -> AbsenceEvent:
    """Decodes and validates one record of ``absences``; raises :class:`InvalidRecord`.

    Beyond :func:`schemas.models.validate`, the record key must be the absence id: partitioning (and so
    the order of one absence's changes) depends on it.
    """
    try:
        record = codec.decode(msg.value())
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
    if key is None or key.decode(errors="replace") != event.absence.id:
        raise InvalidRecord(
            ErrorKind.INVALID,
            f"record key {key!r} is not the absence id {event.absence.id!r}",
            event.event_id,
        )
    return event


def dead_letter(dead_letter_topic: str, msg: Message, kind: ErrorKind, reason: str) -> Output:
    """The dead-letter copy of ``msg``: original key, value and headers, plus the reason headers."""
    topic, partition, offset = coordinates(msg)
    original = msg.headers() or []
    pairs = list(original.items()) if isinstance(original, dict) else list(original)
    headers: list[tuple[str, bytes]] = [
        (name, value if isinstance(value, bytes) else (value or "").encode()) for name, value in pairs
    ]
    headers += [
        ("absync-error-kind", kind.value.encode()),
        ("absync-reason", reason.encode()),
        ("absync-source-topic", topic.encode()),
        ("absync-source-partition", str(partition).encode()),
        ("absync-source-offset", str(offset).encode()),
    ]
    return Output(dead_letter_topic, msg.key(), msg.value(), headers)
