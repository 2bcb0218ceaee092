"""The Slack daily post keeps to working days: not before ``post_time``, not on a non-working day,
not on a public holiday of the destination (``public_holidays``), and a holiday is never the "back on"
day. The scheduler runs on the real broker with a clock the test moves, against the Slack fake.

"Nothing was posted" is never waited for: a *witness* destination of the same tenant, whose rules say
post, is handled in the same scheduler pass; once its post is there, the pass that left the other
destination alone has run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError as PydanticValidationError

from connectors.slack import MAX_PUBLIC_HOLIDAYS as slack_bound
from processors.slack_message import MAX_PUBLIC_HOLIDAYS, PostSettings, PostSettingsError, render
from processors.slack_scheduler import run_together, runtimes
from schemas.destination import ChangeSelection, Destination, Filters
from schemas.models import AbsenceStatus, ChangeKind, HalfDay
from streams.destination_input import DestinationCreate
from streams.destinations import publish_destination
from streams.secrets import SecretBox
from streams.settings import Settings
from tests.connectors.test_slack import CHANNEL, MONDAY, absence, post_settings, wait_until
from tests.fakes.slack import FakeSlack
from tests.streams_helpers import produce_events

WITNESS = "C0WITNESS"
TUESDAY_HOLIDAY = MONDAY + dt.timedelta(days=1)  # Tuesday 10 March 2026
SATURDAY = MONDAY + dt.timedelta(days=5)


def paris(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    """``day`` at ``hour:minute`` in Paris (UTC+1 in March), as the aware UTC time the clock gives."""
    return dt.datetime.combine(day, dt.time(hour - 1, minute), tzinfo=dt.UTC)


class Clock:
    """A clock the test sets; the scheduler reads it at each tick."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


# -- the settings and the text ----------------------------------------------------------------


def test_public_holidays_are_validated_and_bounded() -> None:
    settings = PostSettings.from_settings({"public_holidays": ["2026-03-10", dt.date(2026, 12, 25)]})
    assert settings.public_holidays == {dt.date(2026, 3, 10), dt.date(2026, 12, 25)}
    assert not settings.is_working_day(dt.date(2026, 3, 10))
    assert settings.next_working_day(MONDAY) == dt.date(2026, 3, 11)
    for bad, message in [
        ("2026-03-10", "must be a list"),
        (["2026-3-10"], r"public_holidays\[0\] must be a date"),
        (["2026-02-30"], r"public_holidays\[0\] must be a date"),
        ([20260310], r"public_holidays\[0\] must be a date"),
        (["2026-03-10T00:00"], r"public_holidays\[0\] must be a date"),
        (["2026-01-01"] * (MAX_PUBLIC_HOLIDAYS + 1), f"more than the {MAX_PUBLIC_HOLIDAYS} allowed"),
    ]:
        with pytest.raises(PostSettingsError, match=message):
            PostSettings.from_settings({"public_holidays": bad})
    for days in (["1"], [0], [True], "12345", [8]):
        with pytest.raises(PostSettingsError, match="working_days"):
            PostSettings.from_settings({"working_days": days})


def test_back_on_and_the_next_section_skip_a_public_holiday() -> None:
    settings = PostSettings.from_settings(post_settings(group_by=None, public_holidays=["2026-03-10"]))
    friday_to_monday = absence("Jane Doe", dt.date(2026, 3, 6), MONDAY)
    morning = absence("Marc Petit", MONDAY, TUESDAY_HOLIDAY + dt.timedelta(days=1), end_half=HalfDay.AM)
    assert render(MONDAY, [friday_to_monday, morning], settings) == (
        "*Absent today, Monday 9 March*\n"
        "• Jane Doe: all day, back on Wednesday 11 March\n"
        "• Marc Petit: all day, back on Wednesday 11 March afternoon\n"
        "\n"
        "*Absent on Wednesday 11 March*\n"
        "• Marc Petit: morning"
    )


# -- the scheduler on the broker ----------------------------------------------------------------


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        fake.add_channel(CHANNEL, "hr-absences")
        fake.add_channel(WITNESS, "hr-witness")
        yield fake


def slack_destination(
    settings: Settings,
    fake: FakeSlack,
    dest_id: str,
    channel: str,
    changes: ChangeSelection = ChangeSelection.APPROVED_AND_DELETIONS,
    **extra: Any,
) -> None:
    publish_destination(
        settings,
        Destination(
            id=dest_id,
            tenant="acme",
            name=dest_id,
            kind="slack",
            filters=Filters(legal_entities=("le-fr",)),
            changes=changes,
            settings={
                "channel": channel,
                "base_url": fake.api_url(),
                **post_settings(group_by=None),
                **extra,
            },
            secrets={"bot_token": SecretBox.from_settings(settings).encrypt(fake.token)},
        ),
    )


def posts(fake: FakeSlack, channel: str) -> list[str]:
    """The days of the channel's posts (from the metadata each carries)."""
    return [m["metadata"]["event_payload"]["day"] for m in fake.messages(channel)]


def test_no_post_before_post_time_on_a_weekend_or_on_a_public_holiday(
    settings: Settings, slack: FakeSlack
) -> None:
    slack_destination(
        settings, slack, "dst-slack", CHANNEL, post_time="09:00", public_holidays=["2026-03-10"]
    )
    # The witness shows pending absences too (all changes): a refused one must be gone from it.
    slack_destination(
        settings,
        slack,
        "dst-witness",
        WITNESS,
        ChangeSelection.ALL,
        post_time="08:00",
        working_days=[1, 2, 3, 4, 5, 6, 7],
    )
    pending = absence("Paula Pending", MONDAY, status=AbsenceStatus.PENDING, change=ChangeKind.CREATED)
    refused = absence(
        "Paula Pending", MONDAY, status=AbsenceStatus.REFUSED, change=ChangeKind.UPDATED, version=2
    )
    still_pending = absence("Pia Waiting", MONDAY, status=AbsenceStatus.PENDING, change=ChangeKind.CREATED)
    nora = absence("Nora Nomail", MONDAY)
    no_email = dataclasses.replace(nora, employee=dataclasses.replace(nora.employee, email=None))
    produce_events(settings, [absence("Jane Doe", MONDAY), pending, refused, still_pending, no_email])
    clock = Clock(paris(MONDAY, 8, 30))
    halt = threading.Event()
    parts = runtimes(settings, clock=clock, tick=0.2, worker_id="w1")
    thread = threading.Thread(target=run_together, args=(parts, halt), daemon=True)
    thread.start()
    try:
        # 08:30 on Monday: the witness (08:00) posts; the destination (09:00) does not, yet.
        wait_until(lambda: posts(slack, WITNESS) == ["2026-03-09"])
        assert posts(slack, CHANNEL) == []

        # 09:30: it posts; "back on" and the next section skip the holiday.
        clock.now = paris(MONDAY, 9, 30)
        wait_until(lambda: posts(slack, CHANNEL) == ["2026-03-09"])
        expected = (
            "*Absent today, Monday 9 March*\n"
            "• Jane Doe: all day, back on Wednesday 11 March\n"
            "• Nora Nomail: all day, back on Wednesday 11 March\n"
            "\n"
            "*Absent on Wednesday 11 March*\n"
            "Nobody is absent."
        )
        # The post may go out before the day's projection has read every event (the suite loads the
        # broker); a late change edits the same message, so wait for the edited text.
        wait_until(lambda: [m["text"] for m in slack.messages(CHANNEL)] == [expected])

        # Tuesday, a public holiday of the destination only; then Saturday, a non-working day.
        for day in (TUESDAY_HOLIDAY, SATURDAY):
            clock.now = paris(day, 10)
            wait_until(lambda day=day: posts(slack, WITNESS)[-1:] == [day.isoformat()])  # type: ignore[misc]
            assert posts(slack, CHANNEL) == ["2026-03-09"]
    finally:
        halt.set()
        thread.join(60)
    assert not thread.is_alive()
    witness_monday = slack.messages(WITNESS)[0]["text"]
    assert "• Pia Waiting: all day, back on Tuesday 10 March (to be approved)" in witness_monday
    assert "• Nora Nomail: all day" in witness_monday, "an employee without email is shown"
    assert "Jane Doe" in witness_monday and "Paula" not in witness_monday, "a refused absence is not shown"
    assert posts(slack, WITNESS) == ["2026-03-09", "2026-03-10", "2026-03-14"]


BAD_HOLIDAYS: list[Any] = [
    "2026-03-10",
    ["2026-3-10"],
    ["2026-02-30"],
    [20260310],
    ["2026-03-10T00:00"],
    ["2026-01-01"] * (MAX_PUBLIC_HOLIDAYS + 1),
    # Probes (docs/security.md): an ISO week date and a basic-format date, which date.fromisoformat
    # takes; a NUL; a nested list; a 1 MB string.
    ["2026-W11-2"],
    ["2026-03-10", "20260310"],
    ["2026-03-1\x00"],
    [["2026-03-10"]],
    ["2" * 1_000_000],
]


@pytest.mark.parametrize("bad", BAD_HOLIDAYS, ids=range(len(BAD_HOLIDAYS)))
def test_a_destination_write_refuses_what_the_post_would_refuse(bad: Any) -> None:
    """The API and ``destinations apply`` check public_holidays with the post's rules (one bound)."""
    assert slack_bound == MAX_PUBLIC_HOLIDAYS
    document = {"id": "acme:slack", "tenant": "acme", "name": "HR", "kind": "slack"}
    good = DestinationCreate.model_validate({**document, "settings": {"public_holidays": ["2026-05-01"]}})
    assert good.settings["public_holidays"] == ["2026-05-01"]
    with pytest.raises(PydanticValidationError, match=r"settings\.public_holidays"):
        DestinationCreate.model_validate({**document, "settings": {"public_holidays": bad}})
    with pytest.raises(PostSettingsError, match="public_holidays"):
        PostSettings.from_settings({"public_holidays": bad})
