"""The shared calendar logic: what event a calendar destination holds for an absence."""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

import pytest

from connectors.calendar import (
    CalendarSettings,
    absence_tag,
    event_span,
    google_event_id,
    log_mailbox,
    wanted_event,
)
from connectors.exceptions import ConfigurationError
from schemas.delivery import Operation
from schemas.models import AbsenceStatus, ChangeKind, HalfDay
from tests.connectors.deliveries import make_delivery

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
DEFAULTS = CalendarSettings.from_settings({})


def span_of(settings: CalendarSettings = DEFAULTS, **absence: object):  # type: ignore[no-untyped-def]
    return event_span(make_delivery(**absence).event, settings)  # type: ignore[arg-type]


def test_whole_days_are_all_day_with_exclusive_end_across_paris_spring_dst() -> None:
    # Europe/Paris moves to summer time on Sunday 29 March 2026.
    span = span_of(start=dt.date(2026, 3, 27), end=dt.date(2026, 3, 30))
    assert span.all_day
    assert (span.start_date, span.end_date) == (dt.date(2026, 3, 27), dt.date(2026, 3, 31))
    assert span.start == dt.datetime(2026, 3, 27, tzinfo=PARIS)
    assert span.start.utcoffset() == dt.timedelta(hours=1)
    assert span.end.utcoffset() == dt.timedelta(hours=2)
    assert span.end - span.start == dt.timedelta(days=4)  # wall clock; one hour less in real time
    assert span.end.astimezone(dt.UTC) - span.start.astimezone(dt.UTC) == dt.timedelta(hours=95)
    assert span.local_iso() == ("2026-03-27T00:00:00", "2026-03-31T00:00:00")
    assert span.time_zone == "Europe/Paris"


def test_lone_half_days_use_the_configured_hours() -> None:
    morning = span_of(start=dt.date(2026, 3, 30), start_half=HalfDay.AM, end_half=HalfDay.AM)
    assert not morning.all_day
    assert morning.local_iso() == ("2026-03-30T09:00:00", "2026-03-30T12:30:00")
    assert morning.start.astimezone(dt.UTC).hour == 7  # summer time: UTC+2
    afternoon = span_of(start=dt.date(2026, 3, 27), start_half=HalfDay.PM, end_half=HalfDay.PM)
    assert afternoon.local_iso() == ("2026-03-27T13:30:00", "2026-03-27T18:00:00")
    assert afternoon.start.astimezone(dt.UTC).hour == 12  # winter time: UTC+1

    custom = CalendarSettings.from_settings(
        {"morning_hours": "08:00-12:00", "afternoon_hours": "14:00-17:30"}
    )
    assert span_of(custom, start_half=HalfDay.PM, end_half=HalfDay.PM).local_iso() == (
        "2026-03-30T14:00:00",
        "2026-03-30T17:30:00",
    )


def test_multi_day_starting_pm_and_ending_am_across_new_york_autumn_dst() -> None:
    # America/New_York goes back to standard time on Sunday 1 November 2026.
    span = span_of(
        start=dt.date(2026, 10, 30),
        end=dt.date(2026, 11, 2),
        start_half=HalfDay.PM,
        end_half=HalfDay.AM,
        time_zone="America/New_York",
    )
    assert not span.all_day
    assert span.local_iso() == ("2026-10-30T13:30:00", "2026-11-02T12:30:00")
    assert span.start.utcoffset() == dt.timedelta(hours=-4)
    assert span.end.utcoffset() == dt.timedelta(hours=-5)
    assert span.start.tzinfo == NEW_YORK


def test_multi_day_with_one_half_boundary_keeps_midnight_on_the_other() -> None:
    starts_pm = span_of(start=dt.date(2026, 3, 26), end=dt.date(2026, 3, 27), start_half=HalfDay.PM)
    assert starts_pm.local_iso() == ("2026-03-26T13:30:00", "2026-03-28T00:00:00")
    ends_am = span_of(start=dt.date(2026, 3, 26), end=dt.date(2026, 3, 27), end_half=HalfDay.AM)
    assert ends_am.local_iso() == ("2026-03-26T00:00:00", "2026-03-27T12:30:00")


def test_hourly_absence_keeps_its_times_in_the_employee_zone() -> None:
    span = span_of(
        start=dt.date(2026, 3, 30), start_time="14:00", end_time="16:15", time_zone="America/New_York"
    )
    assert not span.all_day
    assert span.local_iso() == ("2026-03-30T14:00:00", "2026-03-30T16:15:00")
    assert span.start.astimezone(dt.UTC) == dt.datetime(2026, 3, 30, 18, 0, tzinfo=dt.UTC)


def test_title_hides_the_leave_type_unless_the_destination_opts_in() -> None:
    delivery = make_delivery()
    event = wanted_event(delivery, DEFAULTS)
    assert event is not None and event.title == "Absent"
    named = CalendarSettings.from_settings({"title_template": "{employee_name} away"})
    assert named.title(delivery.event) == "Jane Doe away"
    with pytest.raises(ConfigurationError, match="show_leave_type is false"):
        CalendarSettings.from_settings({"title_template": "Off ({leave_category_name})"})
    shown = CalendarSettings.from_settings(
        {"title_template": "{leave_account_name} / {leave_category_name}", "show_leave_type": True}
    )
    assert shown.title(delivery.event) == "Sick leave / Sickness"
    with pytest.raises(ConfigurationError, match="unknown placeholder"):
        CalendarSettings.from_settings({"title_template": "{salary}"})


@pytest.mark.parametrize(
    "settings",
    [
        {"morning_hours": "9-12"},
        {"afternoon_hours": "18:00-13:30"},
        {"mark_private": "yes"},
        {"title_template": "Absent {"},
    ],
)
def test_bad_settings_are_configuration_errors(settings: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        CalendarSettings.from_settings(settings)


def test_private_out_of_office_by_default_and_public_on_request() -> None:
    event = wanted_event(make_delivery(), DEFAULTS)
    assert event is not None
    assert (event.private, event.tentative, event.show_as) == (True, False, "oof")
    public = wanted_event(make_delivery(), CalendarSettings.from_settings({"mark_private": False}))
    assert public is not None and not public.private


def test_pending_absence_is_hidden_unless_include_pending_then_tentative() -> None:
    pending = make_delivery(status=AbsenceStatus.PENDING, change=ChangeKind.CREATED)
    assert wanted_event(pending, DEFAULTS) is None
    shown = wanted_event(pending, CalendarSettings.from_settings({"include_pending": True}))
    assert shown is not None
    assert (shown.tentative, shown.show_as) == (True, "tentative")


@pytest.mark.parametrize(
    ("change", "status", "operation"),
    [
        (ChangeKind.CANCELLED, AbsenceStatus.CANCELLED, None),
        (ChangeKind.DELETED, AbsenceStatus.APPROVED, None),
        (ChangeKind.UPDATED, AbsenceStatus.CANCELLED, Operation.UPSERT),
        (ChangeKind.APPROVED, AbsenceStatus.APPROVED, Operation.DELETE),
    ],
)
def test_removals_mean_no_event(
    change: ChangeKind, status: AbsenceStatus, operation: Operation | None
) -> None:
    delivery = make_delivery(change=change, status=status, operation=operation)
    assert wanted_event(delivery, CalendarSettings.from_settings({"include_pending": True})) is None


def test_absence_tag_and_google_event_id_are_stable_and_distinct() -> None:
    event = wanted_event(make_delivery(absence_id="abs-42"), DEFAULTS)
    assert event is not None and event.absence_tag == absence_tag("acme", "abs-42")
    assert "acme" in event.absence_tag and "abs-42" in event.absence_tag
    ids = {google_event_id(t, a) for t in ("acme", "globex") for a in ("abs-42", "abs-43")}
    assert len(ids) == 4
    for value in ids:
        assert re.fullmatch(r"[a-v0-9]{5,1024}", value)
    assert google_event_id("acme", "abs-42") == google_event_id("acme", "abs-42")


def test_a_log_line_names_a_mailbox_by_its_domain_only() -> None:
    assert log_mailbox("jane.doe@acme.example") == "…@acme.example"
    assert log_mailbox("jane.doe") == "…", "a value that is not an address gives nothing of itself"
    assert log_mailbox("a@b@acme.example") == "…@acme.example"
