"""The text of a Slack daily post: who is absent on a day, grouped, in English or French.

Pure functions of (day, absences, settings), so the post is the same whichever worker writes it and
the scheduler can tell a changed post from an unchanged one by comparing texts. Example (English,
grouped by department)::

    *Absent today, Monday 9 March*
    *Sales*
    • Jane Doe: all day, back on Wednesday 11 March
    • Marc Petit: morning
    *Support*
    • Ann Lee: afternoon, back on Tuesday 10 March

A person is "all day" when both half-days are covered, else "morning" or "afternoon"; an hourly
absence shows its hours. "Back on" names the first working day after the absence (or "the afternoon
of" a day that ends with a morning off); a morning off today needs no "back on". Working days are the
destination's ``working_days`` less its ``public_holidays``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from schemas.models import AbsenceEvent, HalfDay

LANGUAGES = ("en", "fr")
GROUP_BY = ("department", "legal_entity")
MAX_PUBLIC_HOLIDAYS = 400
"""Dates a destination's ``public_holidays`` may list (a country's holidays for a good ten years)."""

_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "today": "Absent today, {day}",
        "tomorrow": "Absent tomorrow, {day}",
        "next": "Absent on {day}",
        "nobody": "Nobody is absent.",
        "all_day": "all day",
        "AM": "morning",
        "PM": "afternoon",
        "back": "back on {day}",
        "back_pm": "back on {day} afternoon",
        "pending": "to be approved",
        "no_group": "Other",
    },
    "fr": {
        "today": "Absents aujourd'hui, {day}",
        "tomorrow": "Absents demain, {day}",
        "next": "Absents le {day}",
        "nobody": "Personne n'est absent.",
        "all_day": "toute la journée",
        "AM": "matin",
        "PM": "après-midi",
        "back": "retour le {day}",
        "back_pm": "retour le {day} après-midi",
        "pending": "à valider",
        "no_group": "Autres",
    },
}
_DAYS = {
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "fr": ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"),
}
_MONTHS = {
    "en": (
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ),
    "fr": (
        "janvier",
        "février",
        "mars",
        "avril",
        "mai",
        "juin",
        "juillet",
        "août",
        "septembre",
        "octobre",
        "novembre",
        "décembre",
    ),
}


class PostSettingsError(ValueError):
    """A Slack destination's post settings are invalid (the message names the setting)."""


@dataclass(frozen=True)
class PostSettings:
    """The daily post settings of a Slack destination (``Destination.settings``)."""

    post_time: dt.time = dt.time(9, 0)
    time_zone: str = "Europe/Paris"
    working_days: frozenset[int] = frozenset({1, 2, 3, 4, 5})
    """ISO weekdays (1 = Monday)."""
    public_holidays: frozenset[dt.date] = frozenset()
    """Dates that are not working days whatever their weekday: no post, and never a "back on" day."""
    group_by: str | None = None
    group_names: Mapping[str, str] | None = None
    show_tomorrow: bool = False
    show_leave_type: bool = False
    language: str = "en"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> PostSettings:
        try:
            post_time = dt.time.fromisoformat(str(settings.get("post_time", "09:00")))
        except ValueError:
            raise PostSettingsError(f"post_time must be HH:MM, got {settings.get('post_time')!r}") from None
        time_zone = str(settings.get("time_zone", "Europe/Paris"))
        try:
            ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise PostSettingsError(f"unknown time_zone {time_zone!r}") from None
        raw_days = settings.get("working_days") or (1, 2, 3, 4, 5)
        weekdays = isinstance(raw_days, list | tuple) and all(
            isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 7 for d in raw_days
        )
        days = frozenset(raw_days) if weekdays else frozenset()
        if not days:
            raise PostSettingsError("working_days must list ISO weekdays, 1 (Monday) to 7 (Sunday)")
        public_holidays = _holidays(settings.get("public_holidays"))
        group_by = settings.get("group_by") or None
        if group_by is not None and group_by not in GROUP_BY:
            raise PostSettingsError(f"group_by must be one of {', '.join(GROUP_BY)}, got {group_by!r}")
        language = str(settings.get("language", "en")).lower()
        if language not in LANGUAGES:
            raise PostSettingsError(f"language must be one of {', '.join(LANGUAGES)}, got {language!r}")
        return cls(
            post_time=post_time,
            time_zone=time_zone,
            working_days=days,
            public_holidays=public_holidays,
            group_by=group_by,
            group_names={str(k): str(v) for k, v in (settings.get("group_names") or {}).items()},
            show_tomorrow=bool(settings.get("show_tomorrow", False)),
            show_leave_type=bool(settings.get("show_leave_type", False)),
            language=language,
        )

    def is_working_day(self, day: dt.date) -> bool:
        """One of ``working_days`` and not a public holiday."""
        return day.isoweekday() in self.working_days and day not in self.public_holidays

    def next_working_day(self, day: dt.date) -> dt.date:
        """The first working day after ``day`` (ends: holidays are finite, working_days not empty)."""
        following = day + dt.timedelta(days=1)
        while not self.is_working_day(following):
            following += dt.timedelta(days=1)
        return following


def _holidays(value: Any) -> frozenset[dt.date]:
    """``public_holidays``: a list of at most MAX_PUBLIC_HOLIDAYS dates ``YYYY-MM-DD`` (a YAML date
    too); anything else is a PostSettingsError naming the bad entry."""
    if value is None:
        return frozenset()
    if not isinstance(value, list | tuple):
        raise PostSettingsError(
            f"public_holidays must be a list of dates YYYY-MM-DD, got {type(value).__name__}"
        )
    if len(value) > MAX_PUBLIC_HOLIDAYS:
        raise PostSettingsError(
            f"public_holidays lists {len(value)} dates, more than the {MAX_PUBLIC_HOLIDAYS} allowed"
        )
    days: set[dt.date] = set()
    for index, item in enumerate(value):
        if isinstance(item, dt.date) and not isinstance(item, dt.datetime):
            days.add(item)
            continue
        text = item if isinstance(item, str) else ""
        try:  # fromisoformat also takes ISO week dates (2026-W10-2): only YYYY-MM-DD is a date here
            if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
                raise ValueError
            days.add(dt.date.fromisoformat(text))
        except ValueError:
            raise PostSettingsError(
                f"public_holidays[{index}] must be a date YYYY-MM-DD, got {str(item)[:40]!r}"
            ) from None
    return frozenset(days)


def halves_on(event: AbsenceEvent, day: dt.date) -> set[HalfDay]:
    """The half-days of ``day`` the absence covers (empty if none)."""
    return {half for covered, half in event.absence.half_days() if covered == day}


def render(day: dt.date, absences: Iterable[AbsenceEvent], settings: PostSettings) -> str:
    """The post for ``day``: its absences, then (if asked) the next working day's."""
    events = list(absences)
    words = _WORDS[settings.language]
    lines = [f"*{words['today'].format(day=_day(day, settings.language))}*", *_section(day, events, settings)]
    if settings.show_tomorrow:
        following = settings.next_working_day(day)
        title = words["tomorrow"] if following == day + dt.timedelta(days=1) else words["next"]
        lines += [
            "",
            f"*{title.format(day=_day(following, settings.language))}*",
            *_section(following, events, settings),
        ]
    return "\n".join(lines)


def _section(day: dt.date, events: list[AbsenceEvent], settings: PostSettings) -> list[str]:
    words = _WORDS[settings.language]
    present = [(e, halves_on(e, day)) for e in events]
    present = [(e, halves) for e, halves in present if halves]
    if not present:
        return [words["nobody"]]
    groups: dict[str, list[str]] = {}
    for event, halves in sorted(present, key=lambda p: (p[0].employee.display_name.lower(), p[0].absence.id)):
        groups.setdefault(_group(event, settings), []).append(f"• {_line(event, halves, day, settings)}")
    if settings.group_by is None:
        return groups[""]
    lines: list[str] = []
    for name in sorted(groups, key=lambda g: (g == words["no_group"], g.lower())):
        lines += [f"*{name}*", *groups[name]]
    return lines


def _group(event: AbsenceEvent, settings: PostSettings) -> str:
    if settings.group_by is None:
        return ""
    key = (
        event.employee.department_id if settings.group_by == "department" else event.employee.legal_entity_id
    )
    if not key:
        return _WORDS[settings.language]["no_group"]
    return (settings.group_names or {}).get(key, key)


def _line(event: AbsenceEvent, halves: set[HalfDay], day: dt.date, settings: PostSettings) -> str:
    words, language = _WORDS[settings.language], settings.language
    a = event.absence
    if a.is_hourly:
        when = f"{a.start_time}-{a.end_time}"
    elif len(halves) == 2:
        when = words["all_day"]
    else:
        when = words[next(iter(halves)).value]
    parts = [when]
    if a.end_date > day or (a.end_half == HalfDay.PM and not a.is_hourly):
        if a.end_half == HalfDay.AM and not a.is_hourly:
            parts.append(words["back_pm"].format(day=_day(a.end_date, language)))
        else:
            parts.append(words["back"].format(day=_day(settings.next_working_day(a.end_date), language)))
    text = f"{event.employee.display_name}: {', '.join(parts)}"
    extras = [a.leave_account.name] if settings.show_leave_type else []
    if a.status.value == "PENDING":
        extras.append(words["pending"])
    return f"{text} ({', '.join(extras)})" if extras else text


def _day(day: dt.date, language: str) -> str:
    """'Monday 9 March' / 'lundi 9 mars'."""
    return f"{_DAYS[language][day.weekday()]} {day.day} {_MONTHS[language][day.month - 1]}"
