"""The AbsenceEvent codec: round trip, schema evolution, Confluent wire format through a schema registry
served on loopback, unknown schemas."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import fastavro
import pytest

from schemas.codec import AVRO_DIR, SINGLE_OBJECT_MAGIC, AvroCodec, SchemaRegistryResolver, codec_for
from schemas.errors import DecodeError, SchemaNotFoundError
from schemas.models import AbsenceEvent
from tests.fakes.schema_registry import running_registry
from tests.streams_helpers import make_event

V1_TEXT = (AVRO_DIR / "absence_event.v1.avsc").read_text()
V1 = fastavro.parse_schema(json.loads(V1_TEXT))


def v1_record(event: AbsenceEvent) -> dict[str, Any]:
    """The event as a v1 writer knew it (no hourly times, approval times or department)."""
    record = event.to_avro()
    for name in ("start_time", "end_time", "approved_at", "cancelled_at"):
        del record["absence"][name]
    del record["employee"]["department_id"]
    return record


def avro_body(schema: Any, record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, record)
    return buffer.getvalue()


def test_round_trip_keeps_every_field() -> None:
    event = make_event(start_time="09:30", end_time="11:00", end_date=make_event().absence.start_date)
    data = codec_for("AbsenceEvent").encode(event.to_avro())
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == codec_for("AbsenceEvent").fingerprint
    assert AbsenceEvent.from_avro(codec_for("AbsenceEvent").decode(data)) == event


def test_a_v1_record_is_read_as_v2_with_defaults() -> None:
    event = make_event()
    v1_fingerprint = bytes.fromhex(
        fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(V1), "CRC-64-AVRO")
    )
    assert v1_fingerprint != codec_for("AbsenceEvent").fingerprint
    data = SINGLE_OBJECT_MAGIC + v1_fingerprint + avro_body(V1, v1_record(event))

    decoded = codec_for("AbsenceEvent").decode(data)
    assert decoded["employee"]["department_id"] is None
    assert (decoded["absence"]["start_time"], decoded["absence"]["approved_at"]) == (None, None)
    read = AbsenceEvent.from_avro(decoded)
    assert read.absence.start_date == event.absence.start_date
    assert read.employee.email == event.employee.email


def test_an_unknown_fingerprint_is_a_schema_not_found() -> None:
    data = codec_for("AbsenceEvent").encode(make_event().to_avro())
    with pytest.raises(SchemaNotFoundError, match="unknown schema fingerprint"):
        codec_for("AbsenceEvent").decode(data[:2] + b"\x00" * 8 + data[10:])


def test_confluent_wire_format_through_a_registry() -> None:
    event = make_event()
    data = b"\x00" + struct.pack(">I", 42) + avro_body(V1, v1_record(event))
    with running_registry({42: V1_TEXT}) as registry:
        codec = AvroCodec("AbsenceEvent", SchemaRegistryResolver(registry.url))
        first = codec.decode(data)
        again = codec.decode(data)
        with pytest.raises(SchemaNotFoundError, match="schema id 7"):
            codec.decode(b"\x00" + struct.pack(">I", 7) + avro_body(V1, v1_record(event)))
    assert first == again
    assert AbsenceEvent.from_avro(first).event_id == event.event_id
    assert first["employee"]["department_id"] is None
    assert registry.requests == ["/schemas/ids/42", "/schemas/ids/7"]  # 42 fetched once, then cached
    with pytest.raises(DecodeError, match="ABSYNC_SCHEMA_REGISTRY_URL"):
        codec_for("AbsenceEvent").decode(data)
