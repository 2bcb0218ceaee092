"""Typed views of the AbsenceEvent record, to and from Avro dicts and JSON.

JSON (``absync publish``) uses the Avro field names; dates are ``YYYY-MM-DD``, timestamps ISO 8601,
enums lower or upper case.

Text limits (:func:`validate`): every text field has a maximum length (:data:`TEXT_LIMITS`, in
characters) and may hold no control character (Unicode category Cc: NUL, tab, newline, DEL, C1...).
Such an event is *refused*, never normalised: absync does not guess what the HR system meant, and the
refused record is kept whole in the dead-letter topic with the reason naming the field. The tenant may
not contain ``|`` either: it is the separator of the record key ``<tenant>|<absence id>``.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from schemas.errors import ValidationError

_E = TypeVar("_E", bound=enum.StrEnum)


class ChangeKind(enum.StrEnum):
    CREATED = "CREATED"
    APPROVED = "APPROVED"
    UPDATED = "UPDATED"
    CANCELLED = "CANCELLED"
    DELETED = "DELETED"

    @property
    def removes(self) -> bool:
        """True when the change means the absence must disappear from destinations."""
        return self in (ChangeKind.CANCELLED, ChangeKind.DELETED)


class AbsenceStatus(enum.StrEnum):
    """The absence's status. REFUSED exists from AbsenceEvent v3 on: on the wire it is ``status``
    CANCELLED (what readers of v1 and v2 act on) with ``hr_status`` REFUSED (see :meth:`AbsenceEvent.to_avro`)."""

    PENDING = "PENDING"
    APPROVED = "APPROVED"
    CANCELLED = "CANCELLED"
    REFUSED = "REFUSED"

    @property
    def removed(self) -> bool:
        """True when the absence must be shown nowhere (cancelled or refused)."""
        return self in (AbsenceStatus.CANCELLED, AbsenceStatus.REFUSED)


class HalfDay(enum.StrEnum):
    AM = "AM"
    PM = "PM"


@dataclass(frozen=True, slots=True)
class LeaveAccount:
    id: str
    name: str
    category_id: str | None = None
    category_name: str | None = None


@dataclass(frozen=True, slots=True)
class Employee:
    id: str
    display_name: str
    legal_entity_id: str
    email: str | None = None
    employee_number: str | None = None
    department_id: str | None = None


@dataclass(frozen=True, slots=True)
class Absence:
    id: str
    status: AbsenceStatus
    start_date: dt.date
    start_half: HalfDay
    end_date: dt.date
    end_half: HalfDay
    time_zone: str
    leave_account: LeaveAccount
    start_time: str | None = None
    end_time: str | None = None
    approved_at: dt.datetime | None = None
    cancelled_at: dt.datetime | None = None

    @property
    def is_hourly(self) -> bool:
        return self.start_time is not None and self.end_time is not None

    def half_days(self) -> list[tuple[dt.date, HalfDay]]:
        """Every half-day the absence covers, in order (Lucca's unit)."""
        out: list[tuple[dt.date, HalfDay]] = []
        day = self.start_date
        while day <= self.end_date:
            for half in (HalfDay.AM, HalfDay.PM):
                if day == self.start_date and half == HalfDay.AM and self.start_half == HalfDay.PM:
                    continue
                if day == self.end_date and half == HalfDay.PM and self.end_half == HalfDay.AM:
                    continue
                out.append((day, half))
            day += dt.timedelta(days=1)
        return out


@dataclass(frozen=True, slots=True)
class AbsenceEvent:
    event_id: str
    occurred_at: dt.datetime
    tenant: str
    change: ChangeKind
    version: int
    absence: Absence
    employee: Employee
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> str:
        """Kafka key: ``<tenant>|<absence id>`` (:func:`absence_key`), so one absence's changes stay in
        order and two tenants' absences with the same id never share a key (compaction keeps both)."""
        return absence_key(self.tenant, self.absence.id)

    @property
    def legacy_key(self) -> str:
        """The key written before tenants were part of it (the absence id alone): still accepted."""
        return self.absence.id

    def with_version(self, version: int) -> AbsenceEvent:
        return replace(self, version=version)

    # -- Avro ---------------------------------------------------------------------------------
    def to_avro(self) -> dict[str, Any]:
        a, e, la = self.absence, self.employee, self.absence.leave_account
        return {
            "event_id": self.event_id,
            "occurred_at": self.occurred_at,
            "tenant": self.tenant,
            "change": self.change.value,
            "version": self.version,
            "absence": {
                "id": a.id,
                "status": _wire_status(a.status).value,
                "start_date": a.start_date,
                "start_half": a.start_half.value,
                "end_date": a.end_date,
                "end_half": a.end_half.value,
                "start_time": a.start_time,
                "end_time": a.end_time,
                "time_zone": a.time_zone,
                "leave_account": {
                    "id": la.id,
                    "name": la.name,
                    "category_id": la.category_id,
                    "category_name": la.category_name,
                },
                "approved_at": a.approved_at,
                "cancelled_at": a.cancelled_at,
                "hr_status": a.status.value if a.status is AbsenceStatus.REFUSED else None,
            },
            "employee": {
                "id": e.id,
                "display_name": e.display_name,
                "email": e.email,
                "employee_number": e.employee_number,
                "legal_entity_id": e.legal_entity_id,
                "department_id": e.department_id,
            },
        }

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> AbsenceEvent:
        a, e = record["absence"], record["employee"]
        la = a["leave_account"]
        return cls(
            event_id=record["event_id"],
            occurred_at=record["occurred_at"],
            tenant=record["tenant"],
            change=ChangeKind(record["change"]),
            version=int(record["version"]),
            absence=Absence(
                id=a["id"],
                status=_status(a["status"], a.get("hr_status")),
                start_date=a["start_date"],
                start_half=HalfDay(a["start_half"]),
                end_date=a["end_date"],
                end_half=HalfDay(a["end_half"]),
                time_zone=a["time_zone"],
                leave_account=LeaveAccount(
                    id=la["id"],
                    name=la["name"],
                    category_id=la.get("category_id"),
                    category_name=la.get("category_name"),
                ),
                start_time=a.get("start_time"),
                end_time=a.get("end_time"),
                approved_at=a.get("approved_at"),
                cancelled_at=a.get("cancelled_at"),
            ),
            employee=Employee(
                id=e["id"],
                display_name=e["display_name"],
                legal_entity_id=e["legal_entity_id"],
                email=e.get("email") or None,  # "" is no email, like null
                employee_number=e.get("employee_number"),
                department_id=e.get("department_id"),
            ),
        )

    # -- JSON ---------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        def conv(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: conv(v) for k, v in value.items()}
            if isinstance(value, dt.datetime):
                return value.isoformat()
            if isinstance(value, dt.date):
                return value.isoformat()
            return value

        out: dict[str, Any] = conv(self.to_avro())
        return out

    @classmethod
    def from_json(cls, data: Any) -> AbsenceEvent:
        """Builds an event from its JSON form; raises ValidationError naming the bad field."""
        if not isinstance(data, dict):
            raise ValidationError("an event must be a JSON object")
        try:
            a = _obj(data, "absence")
            e = _obj(data, "employee")
            la = _obj(a, "leave_account", "absence.")
            return cls(
                event_id=_str(data, "event_id"),
                occurred_at=_datetime(data.get("occurred_at"), "occurred_at"),
                tenant=_str(data, "tenant"),
                change=_enum(ChangeKind, data.get("change"), "change"),
                version=_int(data.get("version"), "version"),
                absence=Absence(
                    id=_str(a, "id", "absence."),
                    status=_status(
                        _enum(AbsenceStatus, a.get("status"), "absence.status"),
                        None
                        if a.get("hr_status") is None
                        else _enum(AbsenceStatus, a.get("hr_status"), "absence.hr_status"),
                    ),
                    start_date=_date(a.get("start_date"), "absence.start_date"),
                    start_half=_enum(HalfDay, a.get("start_half", "AM"), "absence.start_half"),
                    end_date=_date(a.get("end_date"), "absence.end_date"),
                    end_half=_enum(HalfDay, a.get("end_half", "PM"), "absence.end_half"),
                    time_zone=_str(a, "time_zone", "absence."),
                    leave_account=LeaveAccount(
                        id=_str(la, "id", "absence.leave_account."),
                        name=_str(la, "name", "absence.leave_account."),
                        category_id=_opt_str(la, "category_id"),
                        category_name=_opt_str(la, "category_name"),
                    ),
                    start_time=_opt_str(a, "start_time"),
                    end_time=_opt_str(a, "end_time"),
                    approved_at=_opt_datetime(a.get("approved_at"), "absence.approved_at"),
                    cancelled_at=_opt_datetime(a.get("cancelled_at"), "absence.cancelled_at"),
                ),
                employee=Employee(
                    id=_str(e, "id", "employee."),
                    display_name=_str(e, "display_name", "employee."),
                    legal_entity_id=_str(e, "legal_entity_id", "employee."),
                    email=_opt_str(e, "email"),
                    employee_number=_opt_str(e, "employee_number"),
                    department_id=_opt_str(e, "department_id"),
                ),
            )
        except ValidationError:
            raise
        except (TypeError, ValueError) as exc:
            raise ValidationError(str(exc)) from exc


def _wire_status(status: AbsenceStatus) -> AbsenceStatus:
    """``status`` as the v1/v2 field carries it: REFUSED is CANCELLED there (removed everywhere)."""
    return AbsenceStatus.CANCELLED if status is AbsenceStatus.REFUSED else status


def _status(status: str, hr_status: str | None) -> AbsenceStatus:
    """The absence's status from the ``status`` and ``hr_status`` fields (v3; see the schema's docs).

    ``hr_status`` REFUSED needs ``status`` CANCELLED (so that readers of v1 and v2 remove it too);
    any other ``hr_status`` must equal ``status``. A JSON event may also say ``status: refused`` alone.
    Raises ValidationError otherwise: absync does not guess which of two statuses the HR system meant.
    """
    wire = AbsenceStatus(status)
    if hr_status is None:
        return wire
    hr = AbsenceStatus(hr_status)
    if hr is AbsenceStatus.REFUSED and wire in (AbsenceStatus.CANCELLED, AbsenceStatus.REFUSED):
        return hr
    if hr is AbsenceStatus.REFUSED:
        raise ValidationError(
            f"absence.hr_status is REFUSED but absence.status is {wire}: a refused absence has status "
            "CANCELLED (what readers of earlier schema versions act on)"
        )
    if hr is not wire:
        raise ValidationError(f"absence.hr_status {hr} contradicts absence.status {wire}")
    return wire


def absence_key(tenant: str, absence_id: str) -> str:
    """The record key of one absence on ``absences`` and ``resync``: ``<tenant>|<absence id>``."""
    return f"{tenant}|{absence_id}"


ID_LENGTH = 256
NAME_LENGTH = 512
TEXT_LIMITS: dict[str, int] = {
    "event_id": ID_LENGTH,
    "tenant": ID_LENGTH,
    "absence.id": ID_LENGTH,
    "absence.time_zone": 64,
    "absence.start_time": 8,
    "absence.end_time": 8,
    "absence.leave_account.id": ID_LENGTH,
    "absence.leave_account.name": NAME_LENGTH,
    "absence.leave_account.category_id": ID_LENGTH,
    "absence.leave_account.category_name": NAME_LENGTH,
    "employee.id": ID_LENGTH,
    "employee.display_name": NAME_LENGTH,
    "employee.email": 320,
    "employee.employee_number": ID_LENGTH,
    "employee.legal_entity_id": ID_LENGTH,
    "employee.department_id": ID_LENGTH,
}
"""Maximum length in characters of each text field of an AbsenceEvent (320: RFC 5321's address)."""


def text_fields(event: AbsenceEvent) -> dict[str, str | None]:
    """Every text field of the event by its dotted Avro name (the keys of :data:`TEXT_LIMITS`)."""
    a, e, la = event.absence, event.employee, event.absence.leave_account
    return {
        "event_id": event.event_id,
        "tenant": event.tenant,
        "absence.id": a.id,
        "absence.time_zone": a.time_zone,
        "absence.start_time": a.start_time,
        "absence.end_time": a.end_time,
        "absence.leave_account.id": la.id,
        "absence.leave_account.name": la.name,
        "absence.leave_account.category_id": la.category_id,
        "absence.leave_account.category_name": la.category_name,
        "employee.id": e.id,
        "employee.display_name": e.display_name,
        "employee.email": e.email,
        "employee.employee_number": e.employee_number,
        "employee.legal_entity_id": e.legal_entity_id,
        "employee.department_id": e.department_id,
    }


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""Unicode category Cc (C0, DEL, C1) and lone surrogates (not encodable in UTF-8)."""


def _check_text(name: str, value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string")
    limit = TEXT_LIMITS[name]
    if len(value) > limit:
        raise ValidationError(f"{name} is {len(value)} characters long, more than the {limit} allowed")
    bad = _CONTROL.search(value)
    if bad is not None:
        raise ValidationError(
            f"{name} contains the control character U+{ord(bad.group()):04X} at position {bad.start()}"
        )


def validate(event: AbsenceEvent) -> None:
    """Checks the rules a single event must follow; raises ValidationError with a clear reason.

    Text fields first (length and control characters, see the module docstring), then the rules of
    the content. Rules that need history (a version going backwards) are the processors' business.
    """
    for name, value in text_fields(event).items():
        _check_text(name, value)
    if "|" in event.tenant:
        raise ValidationError(f"tenant may not contain '|' (the key separator): {event.tenant!r}")
    a, e = event.absence, event.employee
    if not event.event_id.strip():
        raise ValidationError("event_id is empty")
    if not event.tenant.strip():
        raise ValidationError("tenant is empty")
    if not a.id.strip():
        raise ValidationError("absence.id is empty")
    if event.version < 1:
        raise ValidationError(f"version must be >= 1, got {event.version}")
    if (a.end_date, a.end_half) < (a.start_date, a.start_half):
        raise ValidationError(
            f"absence ends before it starts: {a.start_date} {a.start_half} > {a.end_date} {a.end_half}"
        )
    if e.email is not None and "@" not in e.email:
        # No email is fine (ADP, HTTP and Slack do without; calendars end that delivery in Error), a
        # malformed one is not: it would be sent as the employee's mailbox.
        raise ValidationError(f"employee {e.id} has no valid email (got {e.email!r})")
    try:
        ZoneInfo(a.time_zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(f"unknown time zone {a.time_zone!r}") from exc
    if (a.start_time is None) != (a.end_time is None):
        raise ValidationError("an hourly absence needs both start_time and end_time")
    if a.start_time is not None and a.end_time is not None:
        start, end = _hhmm(a.start_time, "start_time"), _hhmm(a.end_time, "end_time")
        if a.start_date != a.end_date:
            raise ValidationError("an hourly absence must start and end on the same day")
        if end <= start:
            raise ValidationError(f"hourly absence ends before it starts: {a.start_time}-{a.end_time}")
    if event.change.removes and a.status == AbsenceStatus.APPROVED and event.change == ChangeKind.CANCELLED:
        raise ValidationError("a cancelled absence cannot have status APPROVED")
    if event.change == ChangeKind.APPROVED and a.status != AbsenceStatus.APPROVED:
        raise ValidationError(f"an APPROVED change needs status APPROVED, got {a.status}")


def _hhmm(value: str, name: str) -> dt.time:
    try:
        return dt.time.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError(f"absence.{name} is not HH:MM: {value!r}") from exc


def _obj(data: dict[str, Any], name: str, prefix: str = "") -> dict[str, Any]:
    value = data.get(name)
    if not isinstance(value, dict):
        raise ValidationError(f"{prefix}{name} must be an object")
    return value


def _str(data: dict[str, Any], name: str, prefix: str = "") -> str:
    value = data.get(name)
    if not isinstance(value, str | int) or isinstance(value, bool) or value == "":
        raise ValidationError(f"{prefix}{name} is required (a string)")
    return str(value)


def _opt_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValidationError(f"{name} must be a string")
    return str(value)


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be an integer")
    return value


def _enum(kind: type[_E], value: Any, name: str) -> _E:
    try:
        return kind(str(value).upper())
    except ValueError:
        allowed = ", ".join(m.value.lower() for m in kind)
        raise ValidationError(f"{name} must be one of {allowed}, got {value!r}") from None


def _date(value: Any, name: str) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValidationError(f"{name} must be a date YYYY-MM-DD, got {value!r}") from None


def _datetime(value: Any, name: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        try:
            parsed = dt.datetime.fromisoformat(str(value))
        except ValueError:
            raise ValidationError(f"{name} must be an ISO 8601 timestamp, got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def _opt_datetime(value: Any, name: str) -> dt.datetime | None:
    if value is None or value == "":
        return None
    return _datetime(value, name)
