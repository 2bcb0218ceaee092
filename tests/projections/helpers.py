"""Facts, records and snapshots for the projection tests."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from projections.db import VIEW_TABLES, writer
from projections.projector import BatchResult, Projector, SourceRecord
from schemas.codec import codec_for
from schemas.delivery import Attempt, DeliveryStatus, Status

T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)
STATUS_TOPIC = "delivery-status"
DESTINATIONS_TOPIC = "destinations"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def fact(
    delivery: str = "dlv_1",
    status: Status = Status.PENDING,
    *,
    seq: int,
    when: float,
    attempt: int = 0,
    attempted: bool = False,
    error: str | None = None,
    manual: bool = False,
    trigger: str = "automatic",
    next_retry_at: dt.datetime | None = None,
    tenant: str = "acme",
    destination: str = "dst_1",
    absence: str = "abs_1",
    employee: tuple[str, str | None] = ("Jane Doe", "jane@acme.com"),
    dates: tuple[str, str] = ("2026-12-01", "2026-12-03"),
) -> DeliveryStatus:
    """One DeliveryStatus; ``attempted`` adds the attempt record of attempt number ``attempt``."""
    record = None
    if attempted:
        record = Attempt(
            number=attempt,
            started_at=at(when - 1),
            duration_ms=12.5,
            request_method="PUT",
            request_url=f"https://hooks.example.com/absences/{absence}",
            request_headers={"Authorization": "***", "Content-Type": "application/json"},
            request_body=json.dumps({"id": absence}),
            response_status=503 if error else 200,
            response_headers={"Content-Type": "application/json"},
            response_body='{"error": "busy"}' if error else "{}",
            error=error,
            calls=[{"call": "PUT", "status": "503" if error else "200"}],
        )
    return DeliveryStatus(
        status_id=f"{delivery}:{seq}",
        delivery_id=delivery,
        destination_id=destination,
        tenant=tenant,
        absence_id=absence,
        version=1,
        change="approved",
        operation="UPSERT",
        employee_id="emp_1",
        employee_name=employee[0],
        employee_email=employee[1],
        start_date=dates[0],
        end_date=dates[1],
        status=status,
        trigger=trigger,
        attempt=attempt,
        occurred_at=at(when),
        manual=manual,
        next_retry_at=next_retry_at,
        error=error,
        attempt_record=record,
    )


def encode(value: DeliveryStatus) -> bytes:
    return codec_for("DeliveryStatus").encode(value.to_avro())


def status_records(
    facts: Sequence[DeliveryStatus], *, first_offset: int = 0, partition: int = 0
) -> list[SourceRecord]:
    return [
        SourceRecord(STATUS_TOPIC, partition, first_offset + i, f.delivery_id.encode(), encode(f))
        for i, f in enumerate(facts)
    ]


def apply(engine: Engine, records: Sequence[SourceRecord]) -> BatchResult:
    projector = Projector(STATUS_TOPIC, DESTINATIONS_TOPIC)
    with writer(engine.connect()) as conn, conn.begin():
        return projector.apply(conn, records)


def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of the view tables, in a stable order (for equality checks).

    ``change_seq`` is left out: it numbers the projector's writes in commit order for the live feed,
    so it depends on where batches (and a crash) fell, not on what the view holds."""
    with engine.connect() as conn:
        return {
            table.name: [
                {k: v for k, v in row.items() if k not in POSITION_COLUMNS}
                for row in conn.execute(sa.select(table).order_by(*table.primary_key)).mappings()
            ]
            for table in VIEW_TABLES
        }


POSITION_COLUMNS = frozenset({"change_seq"})
