"""The created item's id and the destination health, projected (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import io

import fastavro
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from projections import queries
from projections.db import destination_health
from projections.health import merge_health
from projections.projector import SourceRecord
from schemas.codec import SINGLE_OBJECT_MAGIC, _fingerprint, _versions, codec_for
from schemas.delivery import EXTERNAL_ID_LIMIT, NOT_SENT_DISABLED, Status, bounded_external_id
from schemas.destination import Destination, Filters
from tests.projections.helpers import DESTINATIONS_TOPIC, STATUS_TOPIC, apply, at, fact, status_records


def health(engine: Engine, destination: str = "dst_1") -> dict[str, object] | None:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(destination_health).where(destination_health.c.destination_id == destination)
        ).first()
    return dict(row._mapping) if row else None


def test_the_created_item_id_of_the_latest_success_is_in_the_delivery_detail(engine: Engine) -> None:
    first = dataclasses.replace(
        fact(status=Status.SUCCESSFUL, seq=1, when=10, attempt=1, attempted=True), external_id="evt-1"
    )
    pending = fact(status=Status.PENDING, seq=2, when=20, attempt=1, error="503 busy", attempted=True)
    second = dataclasses.replace(
        fact(status=Status.SUCCESSFUL, seq=3, when=30, attempt=2, attempted=True), external_id="evt-2"
    )
    apply(engine, status_records([first]))
    detail = queries.get_delivery(engine, "dlv_1", tenant="acme")
    assert detail is not None and detail.delivery.external_id == "evt-1"
    # A later success replaces it; a late-arriving older one does not (order of arrival aside).
    apply(engine, status_records([pending, second, first], first_offset=1))
    detail = queries.get_delivery(engine, "dlv_1", tenant="acme")
    assert detail is not None and detail.delivery.external_id == "evt-2"


def test_a_v1_status_record_without_the_field_projects_with_no_created_item(engine: Engine) -> None:
    """Records written before the schema's v2 stay readable: the id is simply unknown."""
    v1 = _versions("DeliveryStatus")[0]
    assert all(f["name"] != "external_id" for f in v1["fields"])
    record = fact(status=Status.SUCCESSFUL, seq=1, when=10, attempt=1, attempted=True).to_avro()
    record.pop("external_id")
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(v1), record)
    value = SINGLE_OBJECT_MAGIC + _fingerprint(fastavro.parse_schema(v1)) + body.getvalue()
    result = apply(engine, [SourceRecord(STATUS_TOPIC, 0, 0, b"dlv_1", value)])
    assert (result.applied, result.undecodable) == (1, 0)
    detail = queries.get_delivery(engine, "dlv_1", tenant="acme")
    assert detail is not None and (detail.delivery.status, detail.delivery.external_id) == (
        "SUCCESSFUL",
        None,
    )


def test_a_created_item_id_is_bounded_and_printable() -> None:
    assert bounded_external_id(None) is None
    assert bounded_external_id("\x00\n") is None
    assert bounded_external_id("evt\n-1\x00") == "evt-1"
    assert bounded_external_id("x" * 50_000) == "x" * EXTERNAL_ID_LIMIT


def test_failures_start_a_failing_period_that_a_success_ends(engine: Engine) -> None:
    fail = [
        fact(f"dlv_{i}", Status.PENDING, seq=i, when=100 + i, attempt=1, attempted=True, error=f"503 #{i}")
        for i in range(3)
    ]
    apply(engine, status_records(fail))
    row = health(engine)
    assert row is not None
    assert (row["failing_since"], row["last_failure_at"], row["last_error"]) == (at(100), at(102), "503 #2")
    assert (row["failures"], row["successes"], row["last_success_at"]) == (3, 0, None)
    ok = fact("dlv_9", Status.SUCCESSFUL, seq=9, when=200, attempt=1, attempted=True)
    apply(engine, status_records([ok], first_offset=3))
    row = health(engine)
    assert row is not None
    assert (row["failing_since"], row["last_success_at"], row["successes"]) == (None, at(200), 1)


def test_what_is_neither_a_success_nor_a_failure() -> None:
    """Mark as processed is no success of the destination; a delivery held back by a disabled
    destination, a superseded one and a plain PENDING are no failures."""
    marked = fact(status=Status.SUCCESSFUL, seq=1, when=10, manual=True)
    held = fact(status=Status.ERROR, seq=2, when=11, error=NOT_SENT_DISABLED)
    superseded = fact(status=Status.SUPERSEDED, seq=3, when=12, error="the destination was deleted")
    accepted = fact(status=Status.PENDING, seq=4, when=13)
    row = None
    for each in (marked, held, superseded, accepted):
        row = merge_health(row, each)
    assert row is not None
    assert (row["successes"], row["failures"], row["failing_since"], row["last_success_at"]) == (
        0,
        0,
        None,
        None,
    )


def test_a_late_success_never_makes_the_failing_period_start_earlier() -> None:
    """f1 < s < f2 applied as f1, f2, s: the first failure after s is f2 (exact here)."""
    f1 = fact("dlv_1", Status.PENDING, seq=1, when=10, attempted=True, attempt=1, error="down")
    f2 = fact("dlv_2", Status.PENDING, seq=1, when=30, attempted=True, attempt=1, error="down")
    s = fact("dlv_3", Status.SUCCESSFUL, seq=1, when=20, attempted=True, attempt=1)
    row = merge_health(merge_health(merge_health(None, f1), f2), s)
    assert (row["failing_since"], row["last_success_at"], row["last_failure_at"]) == (at(30), at(20), at(30))
    # A failure older than the latest success does not start a period either.
    late = merge_health(merge_health(None, s), f1)
    assert (late["failing_since"], late["failures"]) == (None, 1)


def _destination(enabled: bool, revision: int, when: float) -> Destination:
    return Destination(
        id="dst_1",
        tenant="acme",
        name="Hooks",
        kind="http",
        enabled=enabled,
        filters=Filters(),
        settings={"url": "https://hooks.example.com"},
        secrets={},
        revision=revision,
        updated_at=at(when),
        updated_by="ops",
    )


def test_enabling_a_disabled_destination_again_ends_its_failing_period(engine: Engine) -> None:
    codec = codec_for("Destination")

    def change(offset: int, destination: Destination) -> list[SourceRecord]:
        return [SourceRecord(DESTINATIONS_TOPIC, 0, offset, b"dst_1", codec.encode(destination.to_avro()))]

    apply(engine, change(0, _destination(True, 1, 0)))
    failing = fact(status=Status.PENDING, seq=1, when=100, attempted=True, attempt=1, error="down")
    apply(engine, status_records([failing]))
    apply(engine, change(1, _destination(False, 2, 200)))
    assert (health(engine) or {})["failing_since"] == at(100)  # disabling alone changes nothing
    apply(engine, change(2, _destination(True, 3, 300)))
    row = health(engine)
    assert row is not None and (row["failing_since"], row["window_start"]) == (None, at(300))
    # A failure from before the re-enabling, projected late, does not count; a later one does.
    old = fact("dlv_2", Status.ERROR, seq=1, when=250, attempted=True, attempt=1, error="down")
    new = fact("dlv_3", Status.ERROR, seq=1, when=350, attempted=True, attempt=1, error="down again")
    apply(engine, status_records([old], first_offset=1))
    assert (health(engine) or {})["failing_since"] is None
    apply(engine, status_records([new], first_offset=2))
    assert (health(engine) or {})["failing_since"] == at(350)
    # Deleting the destination forgets its health.
    apply(engine, [SourceRecord(DESTINATIONS_TOPIC, 0, 3, b"dst_1", None)])
    assert health(engine) is None
