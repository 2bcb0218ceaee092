"""The Google Calendar connector against a local fake of Google OAuth and Calendar v3, with the real
google-auth and google-api-python-client."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.base import CallRecorder
from connectors.calendar import google_event_id
from connectors.exceptions import BackpressureError, ConfigurationError, PermanentError, RetryableError
from connectors.google import GoogleCalendarConnector
from connectors.registry import connector_class
from schemas.delivery import Status, delivery_id_for
from schemas.destination import Destination
from schemas.models import AbsenceStatus, ChangeKind, HalfDay
from streams.destinations import publish_destination
from streams.secrets import SecretBox
from streams.settings import Settings
from tests.connectors.deliveries import TENANT, make_delivery, make_destination
from tests.delivery.harness import RunningWorker, StatusLog
from tests.fakes.google import FakeGoogle
from tests.fakes.loopback import loopback_options
from tests.streams_helpers import make_event, next_change, produce_events, running_fanout

EMAIL = "jane@acme.com"
EVENT_ID = google_event_id(TENANT, "abs-1")


@pytest.fixture
def fake() -> Iterator[FakeGoogle]:
    with FakeGoogle() as google:
        google.add_user(EMAIL)
        yield google


async def open_connector(fake: FakeGoogle, **settings: Any) -> GoogleCalendarConnector:
    secret = SecretStr(json.dumps(fake.service_account_info()))
    connector = GoogleCalendarConnector(
        make_destination("google", fake.settings(**settings)),
        {"service_account_json": secret},
        loopback_options(),
    )
    await connector.setup()
    return connector


@pytest.fixture
async def connector(fake: FakeGoogle) -> AsyncIterator[GoogleCalendarConnector]:
    connector = await open_connector(fake)
    yield connector
    await connector.close()


def calendar(fake: FakeGoogle) -> dict[str, dict[str, Any]]:
    return fake.calendars[EMAIL]


def live(fake: FakeGoogle) -> list[dict[str, Any]]:
    return [e for e in calendar(fake).values() if e["status"] != "cancelled"]


async def test_registered_under_google() -> None:
    assert connector_class("google") is GoogleCalendarConnector


async def test_create_update_delete_and_delete_when_gone(
    fake: FakeGoogle, connector: GoogleCalendarConnector
) -> None:
    outcome = await connector.deliver(make_delivery(), CallRecorder())
    event = calendar(fake)[EVENT_ID]
    assert outcome.external_id == EVENT_ID
    assert (event["summary"], event["eventType"], event["status"]) == ("Absent", "outOfOffice", "confirmed")
    assert event["outOfOfficeProperties"] == {"autoDeclineMode": "declineNone"}
    assert (event["visibility"], event["transparency"]) == ("private", "opaque")
    # A whole day is midnight to midnight in the employee's zone (Google refuses all-day OOO events).
    assert event["start"] == {"dateTime": "2026-03-30T00:00:00+02:00", "timeZone": "Europe/Paris"}
    assert event["end"] == {"dateTime": "2026-03-31T00:00:00+02:00", "timeZone": "Europe/Paris"}

    await connector.deliver(
        make_delivery(end=dt.date(2026, 4, 2), change=ChangeKind.UPDATED, version=2), CallRecorder()
    )
    [updated] = live(fake)
    assert (updated["id"], updated["end"]["dateTime"]) == (EVENT_ID, "2026-04-03T00:00:00+02:00")

    removal = make_delivery(change=ChangeKind.CANCELLED, status=AbsenceStatus.CANCELLED, version=3)
    outcome = await connector.deliver(removal, CallRecorder())
    assert live(fake) == [] and calendar(fake)[EVENT_ID]["status"] == "cancelled"
    assert "removed" in outcome.summary
    outcome = await connector.deliver(removal, CallRecorder())
    assert "already gone" in outcome.summary


async def test_same_delivery_twice_is_one_event_and_recreation_after_delete_revives_it(
    fake: FakeGoogle, connector: GoogleCalendarConnector
) -> None:
    delivery = make_delivery()
    await connector.deliver(delivery, CallRecorder())
    await connector.deliver(delivery, CallRecorder())
    assert len(calendar(fake)) == 1

    await connector.deliver(make_delivery(change=ChangeKind.DELETED, version=2), CallRecorder())
    assert live(fake) == []
    recorder = CallRecorder()
    await connector.deliver(
        make_delivery(change=ChangeKind.UPDATED, version=3, start_half=HalfDay.PM), recorder
    )
    [revived] = live(fake)
    assert revived["id"] == EVENT_ID and revived["status"] == "confirmed"
    assert revived["start"]["dateTime"] == "2026-03-30T13:30:00+02:00"
    assert [(c.method, c.response_status) for c in recorder.calls if "/calendar/v3/" in c.url] == [
        ("POST", 409),
        ("PUT", 200),
    ]


async def test_half_day_and_hourly_absences_in_paris(
    fake: FakeGoogle, connector: GoogleCalendarConnector
) -> None:
    await connector.deliver(
        make_delivery(absence_id="am", start_half=HalfDay.AM, end_half=HalfDay.AM), CallRecorder()
    )
    await connector.deliver(
        make_delivery(absence_id="h", start_time="15:00", end_time="16:30"), CallRecorder()
    )
    morning = calendar(fake)[google_event_id(TENANT, "am")]
    hourly = calendar(fake)[google_event_id(TENANT, "h")]
    assert (morning["start"]["dateTime"], morning["end"]["dateTime"]) == (
        "2026-03-30T09:00:00+02:00",
        "2026-03-30T12:30:00+02:00",
    )
    assert (hourly["start"]["dateTime"], hourly["end"]["dateTime"]) == (
        "2026-03-30T15:00:00+02:00",
        "2026-03-30T16:30:00+02:00",
    )


async def test_pending_is_hidden_unless_include_pending(fake: FakeGoogle) -> None:
    pending = make_delivery(status=AbsenceStatus.PENDING, change=ChangeKind.CREATED)
    hiding = await open_connector(fake)
    showing = await open_connector(fake, include_pending=True, mark_private=False)
    await hiding.deliver(pending, CallRecorder())
    assert calendar(fake) == {}
    await showing.deliver(pending, CallRecorder())
    [event] = live(fake)
    assert (event["status"], event["visibility"]) == ("tentative", "default")


@pytest.mark.parametrize("status", [403, 429])
async def test_rate_limits_are_backpressure(
    fake: FakeGoogle, connector: GoogleCalendarConnector, status: int
) -> None:
    fake.rate_limit(status=status, retry_after=30)
    with pytest.raises(BackpressureError, match="rateLimitExceeded") as caught:
        await connector.deliver(make_delivery(), CallRecorder())
    assert (caught.value.retry_after, caught.value.status_code) == (30, status)
    await connector.deliver(make_delivery(), CallRecorder())
    assert len(live(fake)) == 1


async def test_backend_errors_are_retryable(fake: FakeGoogle, connector: GoogleCalendarConnector) -> None:
    fake.fail(503)
    with pytest.raises(RetryableError) as caught:
        await connector.deliver(make_delivery(), CallRecorder())
    assert not isinstance(caught.value, BackpressureError) and caught.value.status_code == 503


async def test_unknown_user_is_permanent_with_a_clear_message(connector: GoogleCalendarConnector) -> None:
    with pytest.raises(PermanentError, match=re.escape("no Google account for ghost@acme.com")) as caught:
        await connector.deliver(make_delivery(email="ghost@acme.com"), CallRecorder())
    assert not isinstance(caught.value, ConfigurationError)


async def test_missing_delegation_is_a_configuration_error() -> None:
    with FakeGoogle(delegated_scopes=()) as fake:
        fake.add_user(EMAIL)
        connector = await open_connector(fake)
        with pytest.raises(ConfigurationError, match="domain-wide delegation"):
            await connector.deliver(make_delivery(), CallRecorder())


async def test_connection_test_and_token_reuse(fake: FakeGoogle) -> None:
    as_itself = await open_connector(fake)
    assert fake.client_email in (await as_itself.test_connection(CallRecorder())).summary
    connector = await open_connector(fake, test_user=EMAIL)
    outcome = await connector.test_connection(CallRecorder())
    assert EMAIL in outcome.summary
    await connector.deliver(make_delivery(absence_id="a1"), CallRecorder())
    await connector.deliver(make_delivery(absence_id="a2"), CallRecorder())
    assert fake.token_requests == 2  # one for the service account, one for Jane (then reused)


async def test_secrets_never_appear_in_recorded_calls(
    fake: FakeGoogle, connector: GoogleCalendarConnector
) -> None:
    recorder = CallRecorder(connector.secrets)
    await connector.deliver(make_delivery(), recorder)
    assert [c.url.endswith("/token") for c in recorder.calls] == [True, False]
    recorded = repr(recorder.calls)
    private_key_line = fake.service_account_info()["private_key"].splitlines()[1]
    assert private_key_line not in recorded
    tokens = [
        r.headers["authorization"].removeprefix("Bearer ")
        for r in fake.requests
        if "authorization" in r.headers
    ]
    assert tokens and all(token not in recorded for token in tokens)
    assert all("assertion=" not in c.request_body for c in recorder.calls)


def test_bad_key_file_is_a_configuration_error(fake: FakeGoogle) -> None:
    connector = GoogleCalendarConnector(
        make_destination("google", fake.settings()), {"service_account_json": SecretStr("{not json")}
    )
    with pytest.raises(ConfigurationError, match="not a service-account key file"):
        connector._base()


# -- end to end -------------------------------------------------------------------------------------


@pytest.mark.kafka
def test_an_absence_on_the_topic_reaches_the_calendar_and_its_cancellation_removes_it(
    settings: Settings, fake: FakeGoogle
) -> None:
    box = SecretBox.from_settings(settings)
    key_file = json.dumps(fake.service_account_info())
    destination = Destination(
        id="dst-workspace",
        tenant=TENANT,
        name="Google Workspace",
        kind="google",
        settings=fake.settings(),
        secrets={"service_account_json": box.encrypt(key_file)},
        revision=1,
    )
    publish_destination(settings, destination)
    approved = make_event(change=ChangeKind.APPROVED, status=AbsenceStatus.APPROVED, email=EMAIL)
    cancelled = next_change(approved, ChangeKind.CANCELLED, AbsenceStatus.CANCELLED)
    event_id = google_event_id(TENANT, approved.absence.id)
    statuses = StatusLog(settings)
    try:
        with running_fanout(settings), RunningWorker(settings):
            produce_events(settings, [approved])
            created = statuses.wait_settled(delivery_id_for(destination.id, approved.event_id, "UPSERT"))
            held = [dict(e) for e in live(fake)]
            produce_events(settings, [cancelled])
            deleted = statuses.wait_settled(delivery_id_for(destination.id, cancelled.event_id, "DELETE"))
    finally:
        statuses.close()

    assert created.status is Status.SUCCESSFUL, created.error
    [event] = held
    assert event["id"] == event_id
    assert (event["start"]["dateTime"], event["end"]["dateTime"]) == (
        "2026-05-04T00:00:00+02:00",
        "2026-05-07T00:00:00+02:00",
    )
    assert deleted.status is Status.SUCCESSFUL, deleted.error
    assert live(fake) == [] and calendar(fake)[event_id]["status"] == "cancelled"
    private_key_line = fake.service_account_info()["private_key"].splitlines()[1]
    assert private_key_line not in json.dumps(dataclasses.asdict(created), default=str)
