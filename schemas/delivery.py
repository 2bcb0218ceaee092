"""Typed views of the internal records: Delivery (work item), DeliveryStatus (fact), Command."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from schemas.models import AbsenceEvent, AbsenceStatus, ChangeKind

RESPONSE_BODY_LIMIT = 20_000
EXTERNAL_ID_LIMIT = 1_000
"""Longest created-item id kept (``DeliveryStatus.external_id``); a longer one is cut."""
NOT_SENT_DISABLED = "the destination is disabled: not sent"
"""The error of a delivery held back because its destination is disabled (no attempt was made)."""


def delivery_key(destination_id: str, absence_id: str) -> str:
    """Kafka key of deliveries, retries, commands and delivery state."""
    return f"{destination_id}|{absence_id}"


def delivery_id_for(destination_id: str, event_id: str, operation: str = "") -> str:
    """Deterministic: the same change to the same destination always has the same id."""
    digest = hashlib.sha256(f"{destination_id}\x00{event_id}\x00{operation}".encode()).hexdigest()
    return f"dlv_{digest[:32]}"


SLACK_POST_PREFIX = "slack-post:"
"""The absence id of a Slack daily post's delivery: ``slack-post:<ISO day>`` (a digest is no absence)."""


def slack_post_absence_id(day: str) -> str:
    """The absence id under which the post of ``day`` (ISO date) is followed."""
    return f"{SLACK_POST_PREFIX}{day}"


def slack_post_delivery_id(destination_id: str, channel: str, day: str) -> str:
    """Deterministic: one delivery per (destination, channel, day), whoever posts it and however often."""
    digest = hashlib.sha256(f"slack-post\x00{destination_id}\x00{channel}\x00{day}".encode()).hexdigest()
    return f"dlv_{digest[:32]}"


class Operation(enum.StrEnum):
    UPSERT = "UPSERT"
    DELETE = "DELETE"


class Trigger(enum.StrEnum):
    AUTOMATIC = "AUTOMATIC"
    RETRY = "RETRY"
    REPLAY = "REPLAY"


class Status(enum.StrEnum):
    PENDING = "PENDING"
    SUCCESSFUL = "SUCCESSFUL"
    ERROR = "ERROR"
    SUPERSEDED = "SUPERSEDED"


class CommandKind(enum.StrEnum):
    RETRY = "RETRY"
    MARK_PROCESSED = "MARK_PROCESSED"


def bounded_external_id(value: object) -> str | None:
    """A connector's created-item id as kept: text, without control characters, at most
    :data:`EXTERNAL_ID_LIMIT` characters; None when there is none."""
    if value is None:
        return None
    text = "".join(ch for ch in str(value) if ch.isprintable())
    return text[:EXTERNAL_ID_LIMIT] or None


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class Delivery:
    delivery_id: str
    destination_id: str
    tenant: str
    absence_id: str
    version: int
    operation: Operation
    event: AbsenceEvent
    due_at: dt.datetime
    created_at: dt.datetime
    trigger: Trigger = Trigger.AUTOMATIC
    attempt: int = 0
    stage: int = 0
    final: bool = False
    held_email: str | None = field(default=None, compare=False)
    """Not part of the Avro record: the mailbox the destination holds the absence under (the email of
    the last UPSERT it took), set by the delivery worker from its per-key state just before the
    connector is called; None when unknown or nothing is held. Calendar connectors move the event when
    it differs from the employee's email (connectors/calendar.py)."""

    @property
    def key(self) -> str:
        return delivery_key(self.destination_id, self.absence_id)

    def evolve(self, **changes: Any) -> Delivery:
        return replace(self, **changes)

    def to_avro(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id,
            "destination_id": self.destination_id,
            "tenant": self.tenant,
            "absence_id": self.absence_id,
            "version": self.version,
            "operation": self.operation.value,
            "event": self.event.to_avro(),
            "trigger": self.trigger.value,
            "attempt": self.attempt,
            "stage": self.stage,
            "due_at": self.due_at,
            "created_at": self.created_at,
            "final": self.final,
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> Delivery:
        return cls(
            delivery_id=d["delivery_id"],
            destination_id=d["destination_id"],
            tenant=d["tenant"],
            absence_id=d["absence_id"],
            version=int(d["version"]),
            operation=Operation(d["operation"]),
            event=AbsenceEvent.from_avro(d["event"]),
            trigger=Trigger(d.get("trigger", "AUTOMATIC")),
            attempt=int(d.get("attempt", 0)),
            stage=int(d.get("stage", 0)),
            due_at=d["due_at"],
            created_at=d["created_at"],
            final=bool(d.get("final", False)),
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int
    started_at: dt.datetime
    duration_ms: float
    request_method: str
    request_url: str
    request_headers: dict[str, str]
    request_body: str
    response_status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: str | None = None
    error: str | None = None
    calls: list[dict[str, str]] = field(default_factory=list)


def _attempt_avro(attempt: Attempt) -> dict[str, Any]:
    """An Attempt as its Avro record (the encoder only reads it: no copy of its dicts is needed)."""
    return {
        "number": attempt.number,
        "started_at": attempt.started_at,
        "duration_ms": attempt.duration_ms,
        "request_method": attempt.request_method,
        "request_url": attempt.request_url,
        "request_headers": attempt.request_headers,
        "request_body": attempt.request_body,
        "response_status": attempt.response_status,
        "response_headers": attempt.response_headers,
        "response_body": attempt.response_body,
        "error": attempt.error,
        "calls": attempt.calls,
    }


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    status_id: str
    delivery_id: str
    destination_id: str
    tenant: str
    absence_id: str
    version: int
    change: str
    operation: str
    employee_id: str
    employee_name: str
    employee_email: str | None
    start_date: str
    end_date: str
    status: Status
    trigger: str
    attempt: int
    occurred_at: dt.datetime
    manual: bool = False
    next_retry_at: dt.datetime | None = None
    error: str | None = None
    attempt_record: Attempt | None = None
    external_id: str | None = None
    """On success: the id the destination holds the absence under (calendar event id, ADP leave id,
    resource URL), at most :data:`EXTERNAL_ID_LIMIT` characters (schema v2; None in v1 records)."""
    legal_entity_id: str | None = None
    """The employee's legal entity and department, from the absence event (schema v3; None in
    older records), so the follow-up can be filtered by them."""
    department_id: str | None = None

    @classmethod
    def for_delivery(cls, delivery: Delivery, status: Status, seq: int, **extra: Any) -> DeliveryStatus:
        ev = delivery.event
        return cls(
            status_id=f"{delivery.delivery_id}:{seq}",
            delivery_id=delivery.delivery_id,
            destination_id=delivery.destination_id,
            tenant=delivery.tenant,
            absence_id=delivery.absence_id,
            version=delivery.version,
            change=_change_shown(ev),
            operation=delivery.operation.value,
            employee_id=ev.employee.id,
            employee_name=ev.employee.display_name,
            employee_email=ev.employee.email,
            legal_entity_id=ev.employee.legal_entity_id,
            department_id=ev.employee.department_id,
            start_date=ev.absence.start_date.isoformat(),
            end_date=ev.absence.end_date.isoformat(),
            status=status,
            trigger=delivery.trigger.value.lower(),
            attempt=extra.pop("attempt", delivery.attempt),
            occurred_at=extra.pop("occurred_at", now_utc()),
            **extra,
        )

    def to_avro(self) -> dict[str, Any]:
        """Built field by field: ``dataclasses.asdict`` deep-copies recursively, and this runs for
        every status event the delivery worker writes (it showed in the profile)."""
        record = self.attempt_record
        return {
            "status_id": self.status_id,
            "delivery_id": self.delivery_id,
            "destination_id": self.destination_id,
            "tenant": self.tenant,
            "absence_id": self.absence_id,
            "version": self.version,
            "change": self.change,
            "operation": self.operation,
            "employee_id": self.employee_id,
            "employee_name": self.employee_name,
            "employee_email": self.employee_email,
            "start_date": self.start_date,
            "end_date": self.end_date,
            "status": self.status.value,
            "trigger": self.trigger,
            "attempt": self.attempt,
            "occurred_at": self.occurred_at,
            "manual": self.manual,
            "next_retry_at": self.next_retry_at,
            "error": self.error,
            "attempt_record": None if record is None else _attempt_avro(record),
            "external_id": self.external_id,
            "legal_entity_id": self.legal_entity_id,
            "department_id": self.department_id,
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> DeliveryStatus:
        data = dict(d)
        data["status"] = Status(d["status"])
        if d.get("attempt_record") is not None:
            data["attempt_record"] = Attempt(**d["attempt_record"])
        return cls(**data)


def _change_shown(event: AbsenceEvent) -> str:
    """The change as operators see it: ``refused`` for a refusal (not a change kind of its own on the
    wire: an update or a cancellation to status REFUSED), else the change kind in lower case."""
    if event.absence.status is AbsenceStatus.REFUSED and event.change is not ChangeKind.DELETED:
        return "refused"
    return event.change.value.lower()


@dataclass(frozen=True, slots=True)
class Command:
    command_id: str
    kind: CommandKind
    delivery_id: str
    destination_id: str
    absence_id: str
    tenant: str
    issued_by: str
    issued_at: dt.datetime

    @property
    def key(self) -> str:
        return delivery_key(self.destination_id, self.absence_id)

    def to_avro(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        return data

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> Command:
        data = dict(d)
        data["kind"] = CommandKind(d["kind"])
        return cls(**data)
