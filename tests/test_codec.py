"""The AbsenceEvent codec: round trip, schema evolution, Confluent wire format through a schema registry
served on loopback, unknown schemas."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import struct
from typing import Any

import fastavro
import pytest

from schemas.codec import AVRO_DIR, SINGLE_OBJECT_MAGIC, AvroCodec, SchemaRegistryResolver, codec_for
from schemas.delivery import Attempt, DeliveryStatus, Status
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


def test_a_delivery_status_is_written_with_every_field_it_has() -> None:
    """``DeliveryStatus.to_avro`` is written field by field (for speed): it must name every field of
    the dataclasses, or a field added later would be silently dropped or fail to encode."""
    at = dt.datetime(2026, 3, 3, 9, 0, tzinfo=dt.UTC)
    attempt = Attempt(
        2,
        at,
        12.5,
        "PUT",
        "http://127.0.0.1/hook/a",
        {"a": "b"},
        "{}",
        503,
        {"c": "d"},
        "x",
        "boom",
        [{"k": "v"}],
    )
    status = DeliveryStatus(
        status_id="s",
        delivery_id="d",
        destination_id="dest",
        tenant="t",
        absence_id="a",
        version=3,
        change="UPDATED",
        operation="UPSERT",
        employee_id="e",
        employee_name="Jane",
        employee_email="j@x",
        start_date="2026-03-03",
        end_date="2026-03-04",
        status=Status.ERROR,
        trigger="RETRY",
        attempt=2,
        occurred_at=at,
        manual=False,
        next_retry_at=at,
        error="boom",
        attempt_record=attempt,
    )
    expected = dataclasses.asdict(status) | {"status": "ERROR"}
    assert status.to_avro() == expected
    decoded = codec_for("DeliveryStatus").decode(codec_for("DeliveryStatus").encode(status.to_avro()))
    assert DeliveryStatus.from_avro(decoded) == status
    bare = dataclasses.replace(status, attempt_record=None, next_retry_at=None, error=None)
    assert bare.to_avro() == dataclasses.asdict(bare) | {"status": "ERROR"}


def test_a_newer_writer_schema_is_read_through_the_registry() -> None:
    """FORWARD in practice: a producer that moved to a newer AbsenceEvent (here v2 plus an optional
    field absync does not know yet) is read by this absync, the unknown field dropped."""
    newer = json.loads((AVRO_DIR / "absence_event.v2.avsc").read_text())
    newer["fields"].append({"name": "source_system", "type": ["null", "string"], "default": None})
    event = make_event()
    record = event.to_avro() | {"source_system": "hr-suite"}
    data = b"\x00" + struct.pack(">I", 3) + avro_body(fastavro.parse_schema(newer), record)
    with running_registry({3: json.dumps(newer)}) as registry:
        decoded = AvroCodec("AbsenceEvent", SchemaRegistryResolver(registry.url)).decode(data)
    assert "source_system" not in decoded
    assert AbsenceEvent.from_avro(decoded) == event
