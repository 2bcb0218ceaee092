"""REFUSED (AbsenceEvent v3): how it is carried, read by older readers, and removed everywhere.

A refused absence is ``status`` CANCELLED with ``hr_status`` REFUSED on the wire, so readers of v1 and
v2 (which cannot learn a new symbol of their closed enum) remove it too; absync reads it as REFUSED.
"""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import pytest

from schemas.codec import SINGLE_OBJECT_MAGIC, _fingerprint, _versions, codec_for
from schemas.destination import ChangeSelection
from schemas.errors import ValidationError
from schemas.models import AbsenceEvent, AbsenceStatus, ChangeKind
from streams.settings import Settings
from streams.topics import Topics
from tests.streams_helpers import (
    add_destination,
    deliveries_of,
    encode,
    headers_of,
    make_event,
    next_change,
    produce_events,
    produce_raw,
    read_committed,
    read_to_end,
    running_fanout,
    statuses_of,
)


def refused(**fields: Any) -> AbsenceEvent:
    pending = make_event("abs-r", **fields)
    return next_change(pending, ChangeKind.UPDATED, AbsenceStatus.REFUSED)


def read_with(schema: Any, data: bytes) -> Any:
    """Reads an absync single-object record with another version of the schema as the reader."""
    writer = codec_for("AbsenceEvent").schema
    return fastavro.schemaless_reader(io.BytesIO(data[10:]), writer, fastavro.parse_schema(schema))


def test_a_refusal_is_cancelled_for_v1_and_v2_readers_and_refused_for_v3() -> None:
    event = refused()
    record = event.to_avro()
    assert (record["absence"]["status"], record["absence"]["hr_status"]) == ("CANCELLED", "REFUSED")
    data = codec_for("AbsenceEvent").encode(record)
    v1, v2, _ = _versions("AbsenceEvent")
    assert read_with(v1, data)["absence"]["status"] == "CANCELLED"
    assert read_with(v2, data)["absence"]["status"] == "CANCELLED"
    assert "hr_status" not in read_with(v2, data)["absence"]
    back = AbsenceEvent.from_avro(codec_for("AbsenceEvent").decode(data))
    assert back.absence.status is AbsenceStatus.REFUSED
    assert back == event
    assert AbsenceEvent.from_json(json.loads(json.dumps(event.to_json()))) == event


def test_records_of_v2_are_read_unchanged_by_v3() -> None:
    v2 = _versions("AbsenceEvent")[1]
    cancelled = next_change(make_event(), ChangeKind.CANCELLED, AbsenceStatus.CANCELLED)
    record = cancelled.to_avro()
    del record["absence"]["hr_status"]
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(v2), record)
    data = SINGLE_OBJECT_MAGIC + _fingerprint(fastavro.parse_schema(v2)) + buffer.getvalue()
    back = AbsenceEvent.from_avro(codec_for("AbsenceEvent").decode(data))
    assert back.absence.status is AbsenceStatus.CANCELLED
    assert back == cancelled


def test_json_says_refused_either_way_and_contradictions_are_refused() -> None:
    base = make_event().to_json()
    plain = json.loads(json.dumps(base))
    plain["absence"]["status"] = "refused"
    assert AbsenceEvent.from_json(plain).absence.status is AbsenceStatus.REFUSED
    both = json.loads(json.dumps(base))
    both["absence"].update(status="CANCELLED", hr_status="REFUSED")
    assert AbsenceEvent.from_json(both).absence.status is AbsenceStatus.REFUSED
    shown_pending = json.loads(json.dumps(base))
    shown_pending["absence"].update(status="PENDING", hr_status="REFUSED")
    with pytest.raises(ValidationError, match="a refused absence has status CANCELLED"):
        AbsenceEvent.from_json(shown_pending)
    contradiction = json.loads(json.dumps(base))
    contradiction["absence"].update(status="PENDING", hr_status="APPROVED")
    with pytest.raises(ValidationError, match="contradicts"):
        AbsenceEvent.from_json(contradiction)


def test_removed_statuses() -> None:
    assert {s for s in AbsenceStatus if s.removed} == {AbsenceStatus.CANCELLED, AbsenceStatus.REFUSED}


# -- on the broker ------------------------------------------------------------------------------


def test_a_refused_request_is_removed_where_it_was_shown_and_sent_nowhere_else(settings: Settings) -> None:
    """A pending request shown by an all-changes destination gets a DELETE when refused; a destination
    of approved absences never held it and gets nothing; the refusal is shown as "refused"."""
    add_destination(settings, "d-all")
    add_destination(settings, "d-approved", changes=ChangeSelection.APPROVED_AND_DELETIONS)
    pending = make_event("abs-refused")
    refusal = next_change(pending, ChangeKind.UPDATED, AbsenceStatus.REFUSED)
    topics = Topics(settings)
    with running_fanout(settings):
        produce_events(settings, [pending, refusal])
        records = read_committed(
            settings,
            topics.deliveries,
            lambda r: refusal.event_id in {d.event.event_id for d in deliveries_of(r)},
        )
        statuses = statuses_of(read_committed(settings, topics.status, lambda r: len(r) >= 2))
    sent = [(d.destination_id, d.event.event_id, d.operation.value) for d in deliveries_of(records)]
    assert sent == [("d-all", pending.event_id, "UPSERT"), ("d-all", refusal.event_id, "DELETE")]
    [delete] = [d for d in deliveries_of(records) if d.operation.value == "DELETE"]
    assert delete.event.absence.status is AbsenceStatus.REFUSED
    assert {s.change for s in statuses if s.delivery_id == delete.delivery_id} == {"refused"}
    assert read_to_end(settings, topics.invalid) == []


def test_a_refused_status_contradicting_status_is_dead_lettered(settings: Settings) -> None:
    add_destination(settings, "d-all")
    event = make_event("abs-contradiction")
    record = event.to_avro()
    record["absence"]["hr_status"] = "REFUSED"  # with status PENDING: older readers would show it
    bad = codec_for("AbsenceEvent").encode(record)
    following = make_event("abs-after")
    topics = Topics(settings)
    with running_fanout(settings):
        produce_raw(
            settings, [(event.key.encode(), bad, None), (following.key.encode(), encode(following), None)]
        )
        [invalid] = read_committed(settings, topics.invalid, lambda r: len(r) >= 1)
        read_committed(
            settings,
            topics.deliveries,
            lambda r: following.event_id in {d.event.event_id for d in deliveries_of(r)},
        )
    assert headers_of(invalid)["absync-error-kind"] == b"invalid"
    assert b"a refused absence has status CANCELLED" in headers_of(invalid)["absync-reason"]
