"""Ingestion on a real broker: every kind of bad input lands in ``absences.invalid`` with its reason and
original bytes, and the good event produced right after it (same key, so same partition, later offset)
is still fanned out."""

from __future__ import annotations

import io
import json
import struct
from dataclasses import replace
from pathlib import Path

import fastavro

from schemas.codec import AVRO_DIR
from schemas.models import AbsenceEvent, AbsenceStatus, ChangeKind
from streams.settings import Settings
from streams.topics import Topics, create_topics
from tests.conftest import make_settings
from tests.fakes.schema_registry import running_registry
from tests.streams_helpers import (
    RawRecord,
    add_destination,
    at_least,
    deliveries_of,
    encode,
    headers_of,
    make_event,
    next_change,
    produce_raw,
    read_committed,
    running_fanout,
)

Case = tuple[str, bytes, bytes | None, str, str]
"""(name, key, value, expected kind, expected words of the reason)"""


def bad_inputs() -> list[Case]:
    good = encode(make_event("abs-x"))
    body = good[10:]
    undecodable: list[tuple[str, bytes, str, str]] = [
        ("garbage", b"\xff\xfe not avro at all", "decode", "not Avro single-object encoding"),
        ("empty value", b"", "decode", "empty value"),
        ("truncated avro", good[:-7], "decode", "cannot decode"),
        (
            "unknown fingerprint",
            b"\xc3\x01" + b"\x13" * 8 + body,
            "unknown-schema",
            "unknown schema fingerprint",
        ),
        (
            "confluent without registry",
            b"\x00" + struct.pack(">I", 7) + body,
            "decode",
            "ABSYNC_SCHEMA_REGISTRY_URL",
        ),
        ("json instead of avro", json.dumps(make_event().to_json()).encode(), "decode", "not Avro"),
        ("trailing bytes", good + b"\x00\x01", "decode", "trailing bytes"),
    ]
    start = make_event().absence.start_date
    backwards = replace(make_event("abs-seq", version=3), event_id="ev-old")  # abs-seq is at version 5
    wrong: list[tuple[str, AbsenceEvent, str, str]] = [
        ("end before start", make_event(end_date=start.replace(day=1)), "invalid", "ends before it starts"),
        ("email without @", make_event(email="jane.acme.test"), "invalid", "no valid email"),
        ("bad time zone", make_event(time_zone="Mars/Olympus_Mons"), "invalid", "unknown time zone"),
        (
            "hourly end before start",
            make_event(end_date=start, start_time="14:00", end_time="09:30"),
            "invalid",
            "hourly absence ends before it starts",
        ),
        (
            "approved without approval",
            make_event(change=ChangeKind.APPROVED),
            "invalid",
            "needs status APPROVED",
        ),
        ("version going backwards", backwards, "out-of-order", "version going backwards"),
    ]
    wrong_key = make_event()
    return [
        *[
            (name, f"k-{i}".encode(), value, kind, reason)
            for i, (name, value, kind, reason) in enumerate(undecodable)
        ],
        *[(name, e.absence.id.encode(), encode(e), kind, reason) for name, e, kind, reason in wrong],
        ("key is not the absence's", b"someone-else", encode(wrong_key), "invalid", "nor the absence id"),
    ]


def test_each_bad_record_is_dead_lettered_and_the_next_good_one_processed(settings: Settings) -> None:
    add_destination(settings, "dst-all")
    topics = Topics(settings)
    first = make_event("abs-seq", version=5)
    records: list[RawRecord] = [(b"abs-seq", encode(first), None)]
    good_after: dict[str, str] = {}
    cases = bad_inputs()
    for name, key, value, _, _ in cases:
        records.append((key, value, [("origin", name.encode())]))
        if key == b"abs-seq":  # after the version going backwards, the next version of that absence
            follower = replace(next_change(first, ChangeKind.UPDATED, AbsenceStatus.PENDING), version=6)
        else:
            follower = make_event(key.decode())
        records.append((key, encode(follower), None))
        good_after[name] = follower.event_id
    tombstone_key = b"abs-tombstone"
    records.append((tombstone_key, None, [("origin", b"tombstone")]))
    after_tombstone = make_event("abs-tombstone")
    records.append((tombstone_key, encode(after_tombstone), None))
    good_after["tombstone"] = after_tombstone.event_id

    with running_fanout(settings):
        produce_raw(settings, records)
        invalid = read_committed(settings, topics.invalid, at_least(len(cases)))
        wanted = set(good_after.values()) | {first.event_id}
        deliveries = read_committed(
            settings, topics.deliveries, lambda r: wanted <= {d.event.event_id for d in deliveries_of(r)}
        )

    by_origin = {headers_of(m)["origin"].decode(): m for m in invalid}
    assert len(invalid) == len(cases)
    for name, key, value, kind, reason in cases:
        msg = by_origin[name]
        headers = headers_of(msg)
        assert msg.key() == key, name
        assert msg.value() == value, name
        assert headers["absync-error-kind"].decode() == kind, name
        assert reason in headers["absync-reason"].decode(), (name, headers["absync-reason"])
        assert headers["absync-source-topic"].decode() == topics.absences
        assert int(headers["absync-source-offset"]) >= 0
    # A tombstone on absences is an erasure (absync erase, docs/privacy.md), not bad input: it is not
    # dead-lettered, and the absence's next event is processed like a new one.
    assert "tombstone" not in by_origin

    delivered = {d.event.event_id for d in deliveries_of(deliveries)}
    for name, event_id in good_after.items():
        assert event_id in delivered, f"the good event after {name!r} was not processed"
    assert delivered == wanted, "a bad event was fanned out"


def test_a_duplicate_event_is_skipped_silently(settings: Settings) -> None:
    """Duplicates (same event id) make no delivery and no dead letter, even after a newer version."""
    add_destination(settings, "dst-all")
    topics = Topics(settings)
    event = make_event("abs-dup")
    later = next_change(event, ChangeKind.APPROVED, AbsenceStatus.APPROVED)
    final = next_change(later, ChangeKind.UPDATED, AbsenceStatus.APPROVED)
    records: list[RawRecord] = [(b"abs-dup", encode(e), None) for e in (event, event, later, event, final)]
    records.append((b"abs-dup", b"sentinel", None))  # same partition: once it is dead-lettered, all was read
    with running_fanout(settings):
        produce_raw(settings, records)
        deliveries = read_committed(
            settings,
            topics.deliveries,
            lambda r: final.event_id in {d.event.event_id for d in deliveries_of(r)},
        )
        invalid = read_committed(settings, topics.invalid, lambda r: any(m.value() == b"sentinel" for m in r))

    assert [d.event.event_id for d in deliveries_of(deliveries)] == [
        event.event_id,
        later.event_id,
        final.event_id,
    ]
    assert [m.value() for m in invalid] == [b"sentinel"]


def test_confluent_wire_format_is_read_when_a_registry_is_set(bootstrap: str, tmp_path: Path) -> None:
    """With ABSYNC_SCHEMA_REGISTRY_URL, a Confluent-framed v1 event is fanned out; an id the registry
    does not have is asked again (back-off), then dead-lettered with the reason; the next record of that
    id, the registry still saying no, is dead-lettered at once; and the event after them in the same
    partition follows."""
    v1_text = (AVRO_DIR / "absence_event.v1.avsc").read_text()
    v1 = fastavro.parse_schema(json.loads(v1_text))
    event = make_event(department=None)
    record = event.to_avro()
    for name in ("start_time", "end_time", "approved_at", "cancelled_at"):
        del record["absence"][name]
    del record["employee"]["department_id"]
    body = io.BytesIO()
    fastavro.schemaless_writer(body, v1, record)
    key = event.absence.id.encode()
    with running_registry({42: v1_text}) as registry:
        settings = make_settings(
            bootstrap, tmp_path, schema_registry_url=registry.url, schema_registry_unknown_id_retry_for=2.0
        )
        create_topics(settings)
        add_destination(settings, "dst-all")
        with running_fanout(settings):
            produce_raw(
                settings,
                [
                    (key, b"\x00" + struct.pack(">I", 99) + body.getvalue(), None),
                    (key, b"\x00" + struct.pack(">I", 99) + body.getvalue(), None),
                    (key, b"\x00" + struct.pack(">I", 42) + body.getvalue(), None),
                ],
            )
            deliveries = read_committed(settings, Topics(settings).deliveries, at_least(1))
            invalid = read_committed(settings, Topics(settings).invalid, at_least(2))
    assert [d.event for d in deliveries_of(deliveries)] == [event]
    assert headers_of(invalid[0])["absync-error-kind"] == b"unknown-schema"
    reason = headers_of(invalid[0])["absync-reason"].decode()
    assert "schema id 99 not found" in reason and "attempts" in reason
    asked = registry.requests.count("/schemas/ids/99")
    assert asked >= 3  # the first record retried before being dead-lettered, the second asked once
    again = headers_of(invalid[1])["absync-reason"].decode()
    assert "schema id 99 not found" in again and "waited its whole budget lately" in again
    assert [headers_of(m)["absync-source-offset"] for m in invalid] == [b"0", b"1"]
    assert registry.requests.count("/schemas/ids/42") == 1  # cached
