"""Builds deliveries for connector tests: one absence, any shape, with readable defaults."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from schemas.delivery import Delivery, Operation, delivery_id_for
from schemas.destination import Destination
from schemas.models import Absence, AbsenceEvent, AbsenceStatus, ChangeKind, Employee, HalfDay, LeaveAccount

TENANT = "acme"


def make_destination(
    kind: str, settings: dict[str, Any] | None = None, dest_id: str = "dst-cal"
) -> Destination:
    return Destination(id=dest_id, tenant=TENANT, name=f"{kind} calendar", kind=kind, settings=settings or {})


def make_delivery(
    *,
    absence_id: str = "abs-1",
    start: dt.date = dt.date(2026, 3, 30),
    end: dt.date | None = None,
    start_half: HalfDay = HalfDay.AM,
    end_half: HalfDay = HalfDay.PM,
    start_time: str | None = None,
    end_time: str | None = None,
    time_zone: str = "Europe/Paris",
    status: AbsenceStatus = AbsenceStatus.APPROVED,
    change: ChangeKind = ChangeKind.APPROVED,
    version: int = 1,
    operation: Operation | None = None,
    email: str = "jane@acme.com",
    destination_id: str = "dst-cal",
) -> Delivery:
    """A delivery of one absence; the operation follows the change unless given."""
    now = dt.datetime.now(dt.UTC)
    event = AbsenceEvent(
        event_id=str(uuid.uuid4()),
        occurred_at=now,
        tenant=TENANT,
        change=change,
        version=version,
        absence=Absence(
            id=absence_id,
            status=status,
            start_date=start,
            start_half=start_half,
            end_date=end or start,
            end_half=end_half,
            time_zone=time_zone,
            leave_account=LeaveAccount(
                id="la-9", name="Sick leave", category_id="c-2", category_name="Sickness"
            ),
            start_time=start_time,
            end_time=end_time,
        ),
        employee=Employee(id="emp-7", display_name="Jane Doe", legal_entity_id="le-1", email=email),
    )
    op = operation or (Operation.DELETE if change.removes else Operation.UPSERT)
    return Delivery(
        delivery_id=delivery_id_for(destination_id, event.event_id),
        destination_id=destination_id,
        tenant=TENANT,
        absence_id=absence_id,
        version=version,
        operation=op,
        event=event,
        due_at=now,
        created_at=now,
    )
