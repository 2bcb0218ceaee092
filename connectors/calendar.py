"""What a calendar destination should hold for one absence: shared by the Graph, EWS and Google connectors.

Pure logic, no I/O. A connector builds :class:`CalendarSettings` once (in ``__init__``, so a bad
setting is a :class:`ConfigurationError` before any call) and asks :func:`wanted_event` per
delivery: ``None`` means the calendar must *not* hold an event for that absence (deleted, cancelled,
or pending while the destination shows approved absences only).

Time rules (all in the employee's IANA zone, ``absence.time_zone``):

* whole days are all-day: midnight of the first day to midnight after the last (end exclusive);
* a lone half-day is the destination's ``morning_hours`` or ``afternoon_hours``;
* a multi-day absence starting in the afternoon starts at the afternoon's start, one ending in
  the morning ends at the morning's end; its other boundaries stay at midnight;
* an hourly absence is its own times on its day.

Mailboxes (:func:`mailboxes`): an event lives in the employee's mailbox, ``employee.email``.

* An employee without an email has no mailbox: an UPSERT ends in :class:`PermanentError`
  :data:`NO_EMAIL` (Error at once; it goes out by itself with the next event of the absence that
  carries the email, or with an operator's Retry after that event); a DELETE has nothing to remove.
* The email changed: the delivery worker hands the connector the mailbox the destination holds the
  absence under (:attr:`schemas.delivery.Delivery.held_email`, from its per-key state); when it is
  another one, the connector first removes the event from that old mailbox (a mailbox that no longer
  exists, :class:`MailboxGone`, holds nothing), then makes the new one hold it.

Titles hide the reason by default ("Absent"): leave names may reveal sickness, so the template may
use ``{leave_account_name}`` / ``{leave_category_name}`` only when ``show_leave_type`` is true.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from connectors.exceptions import ConfigurationError, PermanentError
from schemas.delivery import Delivery, Operation
from schemas.models import AbsenceEvent, AbsenceStatus, HalfDay

DEFAULT_TITLE = "Absent"
DEFAULT_MORNING = "09:00-12:30"
DEFAULT_AFTERNOON = "13:30-18:00"
PUBLIC_PLACEHOLDERS = frozenset({"employee_name", "employee_email"})
LEAVE_PLACEHOLDERS = frozenset({"leave_account_name", "leave_category_name"})


NO_EMAIL = "no email for this employee"
"""The error of a calendar delivery for an employee without an email address."""


class MailboxGone(PermanentError):
    """The destination has no mailbox for this address (its events, if any, went with it)."""


def mailboxes(delivery: Delivery) -> tuple[str | None, str | None]:
    """(the employee's mailbox now, the other mailbox the destination holds the absence under, if
    any). Addresses compare case-insensitively (``Jane@`` and ``jane@`` are one mailbox)."""
    current = delivery.event.employee.email or None
    held = delivery.held_email or None
    if held is None or (current is not None and held.lower() == current.lower()):
        return current, None
    return current, held


def log_mailbox(email: str) -> str:
    """What a log line says of a mailbox: its domain only (``…@acme.example``). Logs outlive the
    erasure of an employee (docs/privacy.md); the absence tag in the same line identifies the item.
    A value without ``@`` (not an address) gives nothing of itself."""
    _, at, domain = email.rpartition("@")
    return "…@" + domain if at else "…"


def no_email(delivery: Delivery) -> PermanentError:
    """The error of an UPSERT for an employee without an email (see the module docstring)."""
    return PermanentError(
        f"{NO_EMAIL} (employee {delivery.event.employee.id}): a calendar needs a mailbox. Publish a "
        "change of this absence carrying the email: it is sent then (a Retry sends the latest change)"
    )


@dataclass(frozen=True, slots=True)
class Hours:
    """A time range within one day, e.g. the morning ``09:00-12:30``."""

    start: dt.time
    end: dt.time

    @classmethod
    def parse(cls, text: str, name: str) -> Hours:
        try:
            start_text, end_text = text.split("-")
            hours = cls(dt.time.fromisoformat(start_text.strip()), dt.time.fromisoformat(end_text.strip()))
        except ValueError:
            raise ConfigurationError(f"setting {name!r} must be HH:MM-HH:MM, got {text!r}") from None
        if hours.end <= hours.start:
            raise ConfigurationError(f"setting {name!r} ends before it starts: {text!r}")
        return hours


@dataclass(frozen=True, slots=True)
class CalendarSettings:
    """The calendar options every calendar destination shares (see docs/connectors/*.md)."""

    title_template: str = DEFAULT_TITLE
    show_leave_type: bool = False
    mark_private: bool = True
    include_pending: bool = False
    morning: Hours = Hours(dt.time(9, 0), dt.time(12, 30))
    afternoon: Hours = Hours(dt.time(13, 30), dt.time(18, 0))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> CalendarSettings:
        """Reads and checks the options; raises ConfigurationError with the offending setting."""
        template = str(settings.get("title_template") or DEFAULT_TITLE)
        show_leave_type = _flag(settings, "show_leave_type", False)
        allowed = PUBLIC_PLACEHOLDERS | (LEAVE_PLACEHOLDERS if show_leave_type else frozenset())
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        except ValueError as exc:
            raise ConfigurationError(f"setting 'title_template' is not a valid template: {exc}") from None
        for name in sorted(fields):
            if name in LEAVE_PLACEHOLDERS and not show_leave_type:
                raise ConfigurationError(
                    f"title_template uses {{{name}}} but show_leave_type is false (the leave type stays hidden)"
                )
            if name not in allowed:
                raise ConfigurationError(
                    f"title_template uses unknown placeholder {{{name}}} (known: {', '.join(sorted(allowed))})"
                )
        return cls(
            title_template=template,
            show_leave_type=show_leave_type,
            mark_private=_flag(settings, "mark_private", True),
            include_pending=_flag(settings, "include_pending", False),
            morning=Hours.parse(str(settings.get("morning_hours") or DEFAULT_MORNING), "morning_hours"),
            afternoon=Hours.parse(
                str(settings.get("afternoon_hours") or DEFAULT_AFTERNOON), "afternoon_hours"
            ),
        )

    def title(self, event: AbsenceEvent) -> str:
        leave = event.absence.leave_account
        values = {
            "employee_name": event.employee.display_name,
            "employee_email": event.employee.email or "",
            "leave_account_name": leave.name,
            "leave_category_name": leave.category_name or leave.name,
        }
        return self.title_template.format(**values)


@dataclass(frozen=True, slots=True)
class EventSpan:
    """When the event is. ``start``/``end`` are aware datetimes in ``time_zone``; end exclusive.

    For an all-day span both are local midnights, so ``start_date``/``end_date`` are the dates
    to send to APIs that take all-day dates (end exclusive, as iCalendar and Graph want), and
    ``start``/``end`` are the midnight-to-midnight date-times for APIs that refuse all-day events
    (Google's out-of-office).
    """

    start: dt.datetime
    end: dt.datetime
    all_day: bool
    time_zone: str

    @property
    def start_date(self) -> dt.date:
        return self.start.date()

    @property
    def end_date(self) -> dt.date:
        """Exclusive end date (the day after the last day) of an all-day span."""
        return self.end.date()

    def local_iso(self) -> tuple[str, str]:
        """Start and end as naive local ``YYYY-MM-DDTHH:MM:SS`` (to pair with ``time_zone``)."""
        return (
            self.start.replace(tzinfo=None).isoformat(timespec="seconds"),
            self.end.replace(tzinfo=None).isoformat(timespec="seconds"),
        )


@dataclass(frozen=True, slots=True)
class CalendarEvent:
    """The event the calendar must hold for an absence."""

    absence_tag: str
    title: str
    span: EventSpan
    private: bool
    tentative: bool
    """A pending absence shown because the destination has ``include_pending``."""

    @property
    def show_as(self) -> str:
        """Free/busy state in Graph's vocabulary: ``oof`` (out of office) or ``tentative``."""
        return "tentative" if self.tentative else "oof"


def absence_tag(tenant: str, absence_id: str) -> str:
    """The value tagging an event as ours for this absence (stored in the event, searched for)."""
    return f"absync:{tenant}:{absence_id}"


def google_event_id(tenant: str, absence_id: str) -> str:
    """A deterministic Google Calendar event id: base32hex (``a-v0-9``), 52 characters."""
    digest = hashlib.sha256(absence_tag(tenant, absence_id).encode()).digest()
    return base64.b32hexencode(digest).decode().rstrip("=").lower()


def wanted_event(delivery: Delivery, settings: CalendarSettings) -> CalendarEvent | None:
    """The event the calendar must hold for this delivery, or None when it must hold none."""
    event = delivery.event
    absence = event.absence
    if (
        delivery.operation == Operation.DELETE
        or event.change.removes
        or absence.status.removed  # cancelled or refused (a pending one may be shown as tentative)
    ):
        return None
    pending = absence.status == AbsenceStatus.PENDING
    if pending and not settings.include_pending:
        return None
    return CalendarEvent(
        absence_tag=absence_tag(event.tenant, absence.id),
        title=settings.title(event),
        span=event_span(event, settings),
        private=settings.mark_private,
        tentative=pending,
    )


def event_span(event: AbsenceEvent, settings: CalendarSettings) -> EventSpan:
    """The absence's time span in the employee's zone (see the module docstring for the rules)."""
    absence = event.absence
    try:
        zone = ZoneInfo(absence.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"absence {absence.id}: unknown time zone {absence.time_zone!r}") from None

    def at(day: dt.date, time: dt.time) -> dt.datetime:
        return dt.datetime.combine(day, time, tzinfo=zone)

    first, last = absence.start_date, absence.end_date
    if absence.start_time is not None and absence.end_time is not None:
        start = at(first, dt.time.fromisoformat(absence.start_time))
        end = at(last, dt.time.fromisoformat(absence.end_time))
        return EventSpan(start, end, all_day=False, time_zone=absence.time_zone)
    starts_pm = absence.start_half == HalfDay.PM
    ends_am = absence.end_half == HalfDay.AM
    if not starts_pm and not ends_am:
        return EventSpan(
            at(first, dt.time()), at(last + dt.timedelta(days=1), dt.time()), True, absence.time_zone
        )
    if first == last:
        hours = settings.afternoon if starts_pm else settings.morning
        return EventSpan(at(first, hours.start), at(first, hours.end), False, absence.time_zone)
    start = at(first, settings.afternoon.start) if starts_pm else at(first, dt.time())
    end = at(last, settings.morning.end) if ends_am else at(last + dt.timedelta(days=1), dt.time())
    return EventSpan(start, end, all_day=False, time_zone=absence.time_zone)


def _flag(settings: Mapping[str, Any], name: str, default: bool) -> bool:
    value = settings.get(name, default)
    if not isinstance(value, bool):
        raise ConfigurationError(f"setting {name!r} must be true or false, got {value!r}")
    return value
