"""The Slack daily post: its content, and exactly one post per day against a local fake of the Slack
Web API, with the scheduler and its projection running on the real broker."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.base import CallRecorder
from connectors.exceptions import BackpressureError, ConfigurationError, PermanentError, RetryableError
from connectors.registry import connector_class, delivery_connector_class
from connectors.slack import SlackConnector
from processors.slack_message import PostSettings, render
from processors.slack_scheduler import run_together, runtimes
from schemas.delivery import Status
from schemas.destination import ChangeSelection, Destination, Filters
from schemas.models import Absence, AbsenceEvent, AbsenceStatus, ChangeKind, Employee, HalfDay, LeaveAccount
from streams.destinations import publish_destination
from streams.kafka import make_producer, make_transactional_producer
from streams.secrets import SecretBox
from streams.settings import Settings
from streams.topics import Topics
from tests.fakes.loopback import loopback_options
from tests.fakes.slack import FakeSlack
from tests.streams_helpers import READ_LIMIT, encode, produce_events, read_committed, statuses_of

MONDAY = dt.date(2026, 3, 9)
AT_0930_PARIS = dt.datetime(2026, 3, 9, 8, 30, tzinfo=dt.UTC)
CHANNEL = "C0HRABSENCES"
GROUPS = {"dep-sales": "Sales", "dep-support": "Support"}


def absence(
    name: str,
    start: dt.date,
    end: dt.date | None = None,
    *,
    start_half: HalfDay = HalfDay.AM,
    end_half: HalfDay = HalfDay.PM,
    department: str = "dep-sales",
    status: AbsenceStatus = AbsenceStatus.APPROVED,
    change: ChangeKind = ChangeKind.APPROVED,
    tenant: str = "acme",
    leave: str = "Paid leave",
    absence_id: str | None = None,
    version: int = 1,
) -> AbsenceEvent:
    return AbsenceEvent(
        event_id=str(uuid.uuid4()),
        occurred_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
        tenant=tenant,
        change=change,
        version=version,
        absence=Absence(
            id=absence_id or f"abs-{name.split()[0].lower()}",
            status=status,
            start_date=start,
            start_half=start_half,
            end_date=end or start,
            end_half=end_half,
            time_zone="Europe/Paris",
            leave_account=LeaveAccount("la-1", leave, "c-1", "Holidays"),
        ),
        employee=Employee(
            f"emp-{name.split()[0].lower()}",
            name,
            "le-fr",
            f"{name.split()[0].lower()}@acme.test",
            None,
            department,
        ),
    )


def the_week() -> list[AbsenceEvent]:
    """Full-day, half-day and multi-day absences around Monday 9 March 2026, and some not to show."""
    return [
        absence("Jane Doe", MONDAY),
        absence("Marc Petit", MONDAY, end_half=HalfDay.AM),
        absence(
            "Ann Lee",
            MONDAY,
            MONDAY + dt.timedelta(days=2),
            start_half=HalfDay.PM,
            department="dep-support",
            leave="Sick leave",
        ),
        absence("Bob Martin", dt.date(2026, 3, 6), dt.date(2026, 3, 13), department="dep-support"),
        absence("Zoe Roux", MONDAY + dt.timedelta(days=1)),
        absence("Carl Cancel", MONDAY, status=AbsenceStatus.CANCELLED, change=ChangeKind.CANCELLED),
        absence("Paula Pending", MONDAY, status=AbsenceStatus.PENDING, change=ChangeKind.CREATED),
        absence("Otto Other", MONDAY, tenant="globex"),
    ]


def post_settings(**extra: Any) -> dict[str, Any]:
    return {"group_by": "department", "group_names": GROUPS, "show_tomorrow": True, **extra}


EXPECTED_EN = """*Absent today, Monday 9 March*
*Sales*
• Jane Doe: all day, back on Tuesday 10 March
• Marc Petit: morning
*Support*
• Ann Lee: afternoon, back on Thursday 12 March
• Bob Martin: all day, back on Monday 16 March

*Absent tomorrow, Tuesday 10 March*
*Sales*
• Zoe Roux: all day, back on Wednesday 11 March
*Support*
• Ann Lee: all day, back on Thursday 12 March
• Bob Martin: all day, back on Monday 16 March"""


def shown_on_monday(events: list[AbsenceEvent]) -> list[AbsenceEvent]:
    """What the scheduler keeps for an APPROVED_AND_DELETIONS destination of tenant acme."""
    return [e for e in events if e.tenant == "acme" and e.absence.status == AbsenceStatus.APPROVED]


def test_post_content_in_english() -> None:
    text = render(MONDAY, shown_on_monday(the_week()), PostSettings.from_settings(post_settings()))
    assert text == EXPECTED_EN


def test_post_content_in_french_with_leave_types_and_a_friday() -> None:
    settings = PostSettings.from_settings(post_settings(language="fr", show_leave_type=True, group_by=None))
    friday = dt.date(2026, 3, 13)
    events = [
        *shown_on_monday(the_week()),
        absence("Eve Durand", friday, dt.date(2026, 3, 17), end_half=HalfDay.AM),
        absence("Hugo Blanc", dt.date(2026, 3, 16), start_half=HalfDay.PM, status=AbsenceStatus.PENDING),
    ]
    assert render(friday, events, settings) == (
        "*Absents aujourd'hui, vendredi 13 mars*\n"
        "• Bob Martin: toute la journée, retour le lundi 16 mars (Paid leave)\n"
        "• Eve Durand: toute la journée, retour le mardi 17 mars après-midi (Paid leave)\n"
        "\n"
        "*Absents le lundi 16 mars*\n"
        "• Eve Durand: toute la journée, retour le mardi 17 mars après-midi (Paid leave)\n"
        "• Hugo Blanc: après-midi, retour le mardi 17 mars (Paid leave, à valider)"
    )
    assert render(dt.date(2026, 3, 20), [], settings).startswith(
        "*Absents aujourd'hui, vendredi 20 mars*\nPersonne"
    )


# -- the connector against the fake -----------------------------------------------------------
@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        fake.add_channel(CHANNEL, "hr-absences")
        yield fake


def slack_connector(fake: FakeSlack, channel: str = CHANNEL, **settings: Any) -> SlackConnector:
    destination = Destination(
        id="dst-slack",
        tenant="acme",
        name="Slack",
        kind="slack",
        settings={"channel": channel, "base_url": fake.api_url(), **settings},
    )
    return SlackConnector(destination, {"bot_token": SecretStr(fake.token)}, loopback_options())


def test_registered_under_slack() -> None:
    assert connector_class("slack") is SlackConnector


def test_a_post_unknown_to_the_caller_is_found_and_updated_not_posted_twice(slack: FakeSlack) -> None:
    connector = slack_connector(slack)
    midnight = dt.datetime(2026, 3, 9, tzinfo=dt.UTC).timestamp()
    first = connector.publish("2026-03-09", "first", None, midnight, CallRecorder())
    again = connector.publish("2026-03-09", "second", None, midnight, CallRecorder())
    other_day = connector.publish("2026-03-10", "next day", None, midnight, CallRecorder())
    assert (first.action, again.action, again.ts) == ("posted", "updated", first.ts)
    assert [m["text"] for m in slack.messages(CHANNEL)] == ["second", "next day"]
    assert other_day.ts != first.ts


def test_uninvited_private_channel_is_a_permanent_error_naming_it(slack: FakeSlack) -> None:
    slack.add_channel("G0PRIVATE", "hr-private", private=True, member=False)
    connector = slack_connector(slack, channel="G0PRIVATE", channel_name="#hr-private")
    with pytest.raises(PermanentError, match="invite the absync app to #hr-private"):
        connector.publish("2026-03-09", "text", None, 0.0, CallRecorder())
    with pytest.raises(PermanentError, match="invite the absync app to #hr-private"):
        connector.check_channel(CallRecorder())
    assert slack.count("chat.postMessage") == 0


async def test_connection_check_and_no_per_absence_delivery(slack: FakeSlack) -> None:
    connector = slack_connector(slack)
    recorder = CallRecorder(connector.secrets)
    outcome = await connector.test_connection(recorder)
    assert outcome.summary == "absync can post in #hr-absences"
    assert slack.token not in str([vars(c) for c in recorder.calls])
    assert not hasattr(connector, "deliver")  # a digest connector: the fan-out routes it no change
    with pytest.raises(ConfigurationError, match="no per-change deliveries"):
        delivery_connector_class("slack")
    assert slack.channels[CHANNEL].messages == []


def test_rate_limit_is_backpressure_with_retry_after(slack: FakeSlack) -> None:
    slack.rate_limit("chat.postMessage", retry_after=7)
    connector = slack_connector(slack)
    with pytest.raises(BackpressureError) as err:
        connector.publish("2026-03-09", "text", None, 0.0, CallRecorder())
    assert err.value.retry_after == 7.0


# -- the scheduler on the broker --------------------------------------------------------------
def add_slack_destination(settings: Settings, fake: FakeSlack, **extra: Any) -> None:
    destination = Destination(
        id="dst-slack",
        tenant="acme",
        name="HR channel",
        kind="slack",
        filters=Filters(legal_entities=("le-fr",)),
        changes=ChangeSelection.APPROVED_AND_DELETIONS,
        settings={"channel": CHANNEL, "base_url": fake.api_url(), **post_settings(), **extra},
        secrets={"bot_token": SecretBox.from_settings(settings).encrypt(fake.token)},
    )
    publish_destination(settings, destination)


class Worker:
    """The "slack" component's processors in a thread, with a fixed clock."""

    def __init__(self, settings: Settings, worker_id: str = "w1") -> None:
        self._halt = threading.Event()
        parts = runtimes(settings, clock=lambda: AT_0930_PARIS, tick=0.2, worker_id=worker_id)
        self._thread = threading.Thread(target=run_together, args=(parts, self._halt), daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """False once a processor failed (run_together stops them all then)."""
        return self._thread.is_alive() and not self._halt.is_set()

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(60)
        assert not self._thread.is_alive()


def wait_until(condition: Callable[[], bool], limit: float = READ_LIMIT) -> None:
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


def wait_recorded(settings: Settings, successes: int) -> None:
    """Until ``successes`` attempts of the post are committed: the status fact is committed in the
    transaction that records the post, so a worker stopped after this restarts knowing its ts."""
    read_committed(
        settings,
        Topics(settings).status,
        lambda records: sum(f.status is Status.SUCCESSFUL for f in statuses_of(records)) >= successes,
    )


def test_one_post_survives_a_restart_and_a_late_change_edits_it(settings: Settings, slack: FakeSlack) -> None:
    add_slack_destination(settings, slack)
    produce_events(settings, the_week())
    worker = Worker(settings)
    try:
        wait_until(
            lambda: bool(slack.channels[CHANNEL].messages) and "Zoe" in slack.messages(CHANNEL)[0]["text"]
        )
        wait_recorded(settings, 1)
    finally:
        worker.stop()
    [post] = slack.messages(CHANNEL)
    assert post["text"] == EXPECTED_EN
    assert post["metadata"] == {
        "event_type": "absync_daily_post",
        "event_payload": {"destination": "dst-slack", "day": "2026-03-09"},
    }

    worker = Worker(settings)
    try:
        produce_events(settings, [absence("Yann Tard", MONDAY, start_half=HalfDay.PM)])
        wait_until(lambda: "Yann Tard" in slack.messages(CHANNEL)[0]["text"])
    finally:
        worker.stop()
    [edited] = slack.messages(CHANNEL)
    assert edited["ts"] == post["ts"] and "edited" in edited
    assert "• Yann Tard: afternoon, back on Tuesday 10 March\n*Support*" in edited["text"]
    assert slack.count("chat.postMessage") == 1
    assert slack.count("conversations.history") == 1, "the restarted worker knew its post from Kafka"


def test_the_first_post_waits_for_a_backlog_of_absences_to_be_read(
    settings: Settings, slack: FakeSlack
) -> None:
    """After a restart with a backlog in ``absences`` the projection is still reading when the post
    is due: the post is made once, with every absence, not made early and edited. The week comes
    last, in a transaction (so partitions end with a marker, one past the last record)."""
    add_slack_destination(settings, slack)
    backlog = [absence(f"Other {i}", MONDAY, tenant="globex", absence_id=f"g-{i}") for i in range(4000)]
    produce_events(settings, backlog)
    producer = make_transactional_producer(settings, f"{settings.topic_prefix}upstream")
    producer.begin_transaction()
    for event in the_week():
        producer.produce(Topics(settings).absences, key=event.key.encode(), value=encode(event))
    producer.commit_transaction(30)
    worker = Worker(settings)
    try:
        wait_recorded(settings, 1)
    finally:
        worker.stop()
    [post] = slack.messages(CHANNEL)
    assert post["text"] == EXPECTED_EN
    assert "edited" not in post
    assert (slack.count("chat.postMessage"), slack.count("chat.update")) == (1, 0)


def test_a_rate_limited_post_is_made_once_after_retry_after(settings: Settings, slack: FakeSlack) -> None:
    slack.rate_limit("chat.postMessage", times=2, retry_after=1)
    add_slack_destination(settings, slack, language="fr")
    produce_events(settings, the_week())
    worker = Worker(settings)
    try:
        wait_until(lambda: slack.count("chat.postMessage") == 1)
    finally:
        worker.stop()
    assert [c[:3] for c in slack.calls if c[0] == "chat.postMessage"] == [
        ("chat.postMessage", 429, "ratelimited"),
        ("chat.postMessage", 429, "ratelimited"),
        ("chat.postMessage", 200, None),
    ]
    [post] = slack.messages(CHANNEL)
    assert post["text"].startswith(
        "*Absents aujourd'hui, lundi 9 mars*\n*Sales*\n• Jane Doe: toute la journée"
    )


def test_two_workers_make_one_post(settings: Settings, slack: FakeSlack) -> None:
    add_slack_destination(settings, slack)
    produce_events(settings, the_week())
    workers = [Worker(settings, "w1"), Worker(settings, "w2")]
    try:
        wait_until(
            lambda: bool(slack.channels[CHANNEL].messages) and "Zoe" in slack.messages(CHANNEL)[0]["text"]
        )
        produce_events(settings, [absence("Yann Tard", MONDAY)])
        wait_until(lambda: "Yann Tard" in slack.messages(CHANNEL)[0]["text"])
    finally:
        for worker in workers:
            worker.stop()
    [post] = slack.messages(CHANNEL)
    assert "• Yann Tard: all day, back on Tuesday 10 March" in post["text"]
    assert slack.count("chat.postMessage") == 1


def test_a_crash_between_post_and_record_updates_the_post_found_in_history(
    settings: Settings, slack: FakeSlack
) -> None:
    add_slack_destination(settings, slack)
    produce_events(settings, the_week())
    worker = Worker(settings)
    try:
        wait_until(
            lambda: bool(slack.channels[CHANNEL].messages) and "Zoe" in slack.messages(CHANNEL)[0]["text"]
        )
        wait_recorded(settings, 1)
    finally:
        worker.stop()
    # What a crash after chat.postMessage and before the commit leaves behind: only the intent.
    producer = make_producer(settings)
    intent = json.dumps({"channel": CHANNEL, "ts": None, "digest": ""}).encode()
    producer.produce(
        Topics(settings).daily_absences, key=b"post|dst-slack|2026-03-09", value=intent, partition=0
    )
    assert producer.flush(30) == 0
    updates = slack.count("chat.update")

    worker = Worker(settings)
    try:
        wait_until(lambda: slack.count("chat.update") > updates)
    finally:
        worker.stop()
    [post] = slack.messages(CHANNEL)
    assert post["text"] == EXPECTED_EN
    assert slack.count("chat.postMessage") == 1
    assert slack.count("conversations.history") == 2


def test_slack_errors_at_http_200_and_5xx_are_told_apart(slack: FakeSlack) -> None:
    """Slack answers most failures with HTTP 200 and ``ok: false``: the error code decides."""
    connector = slack_connector(slack)
    slack.fail("chat.postMessage", "internal_error")
    with pytest.raises(RetryableError, match="answered 200 internal_error"):
        connector.publish("2026-03-09", "text", None, 0.0, CallRecorder())
    slack.fail("chat.postMessage", "service_unavailable", status=503)
    with pytest.raises(RetryableError, match="answered 503"):
        connector.publish("2026-03-09", "text", None, 0.0, CallRecorder())
    with pytest.raises(PermanentError, match="msg_too_long"):
        connector.publish("2026-03-09", "x" * 40_001, None, 0.0, CallRecorder())
    slack.scopes.discard("chat:write")
    with pytest.raises(ConfigurationError, match=r"missing_scope \(needed: chat:write\)"):
        connector.publish("2026-03-09", "text", None, 0.0, CallRecorder())
    assert slack.channels[CHANNEL].messages == []


def test_a_message_someone_else_wrote_is_not_taken_for_the_post(slack: FakeSlack) -> None:
    slack.add_message(CHANNEL, "Absent today: me")
    connector = slack_connector(slack)
    published = connector.publish("2026-03-09", "the post", None, 0.0, CallRecorder())
    assert published.action == "posted"
    assert [m["text"] for m in slack.messages(CHANNEL)] == ["Absent today: me", "the post"]
