"""The two payload shapes of the generic HTTP connector (connectors/http.py), documented for
receivers in docs/http-sync.md: ``absync.v1`` (one document per change) and ``lucca.legacy`` (one
Lucca leave document per half-day). Pure functions of a delivery: no I/O.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from schemas.delivery import Delivery, Operation
from schemas.models import AbsenceEvent, AbsenceStatus

# -- absync.v1 --------------------------------------------------------------------------------------


def absync_body(delivery: Delivery) -> dict[str, Any]:
    """The stable absync.v1 document: the absence's full latest state and what happened to it."""
    event = delivery.event.to_json()
    deleted = delivery.operation is Operation.DELETE
    return {
        "type": "absence.deleted" if deleted else "absence.upserted",
        "delivery_id": delivery.delivery_id,
        "event_id": event["event_id"],
        "tenant": event["tenant"],
        "change": delivery.event.change.value.lower(),
        "version": event["version"],
        "occurred_at": event["occurred_at"],
        "absence": event["absence"],
        "employee": event["employee"],
    }


# -- lucca.legacy -----------------------------------------------------------------------------------


def lucca_id(value: str | None) -> int | str | None:
    """Lucca's ids were numbers: a digits-only id without leading zero goes out as a JSON number,
    any other id as the string it is (so no information is lost)."""
    if value is not None and value.isdigit() and (value == "0" or not value.startswith("0")):
        return int(value)
    return value


def lucca_timestamp(value: dt.datetime | None) -> str:
    """Lucca's shape: ``2018-04-04T22:34:47.797`` (we send UTC), or "" when unset."""
    if value is None:
        return ""
    utc = value.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}"


def lucca_event_name(delivery: Delivery) -> str:
    """``deleted`` for removals, ``approved`` for an approved absence, ``created`` otherwise."""
    if delivery.operation is Operation.DELETE:
        return "deleted"
    return "approved" if delivery.event.absence.status is AbsenceStatus.APPROVED else "created"


def lucca_bodies(event: AbsenceEvent) -> list[dict[str, Any]]:
    """One Lucca leave document per half-day the absence covers."""
    a, e, la = event.absence, event.employee, event.absence.leave_account
    cancelled = a.status.removed or event.change.removes
    return [
        {
            "id": f"{a.id}-{day:%Y%m%d}-{half.value}",
            "date": day.isoformat(),
            "isAm": half.value == "AM",
            "owner": {
                "id": lucca_id(e.id),
                "name": e.display_name,
                "email": e.email or "",
                "employeeNumber": e.employee_number or "",
            },
            "leaveAccount": {
                "id": lucca_id(la.id),
                "name": la.name,
                "categoryId": lucca_id(la.category_id),
                "categoryName": la.category_name or "",
            },
            "isConfirmed": a.status is AbsenceStatus.APPROVED,
            "confirmationDate": lucca_timestamp(a.approved_at),
            "isCancelled": cancelled,
            "cancellationDate": lucca_timestamp(a.cancelled_at) if cancelled else "",
        }
        for day, half in a.half_days()
    ]
