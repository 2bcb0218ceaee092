"""The Graph connector against a local HTTPS fake of Microsoft identity and Graph, with the real msal."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import structlog.testing
from pydantic import SecretStr

from connectors.base import CallRecorder
from connectors.calendar import absence_tag
from connectors.exceptions import BackpressureError, ConfigurationError, PermanentError, RetryableError
from connectors.graph import GraphConnector
from connectors.registry import connector_class
from schemas.delivery import Status, delivery_id_for
from schemas.destination import Destination
from schemas.models import AbsenceStatus, ChangeKind, HalfDay
from streams.destinations import publish_destination
from streams.secrets import SecretBox
from streams.settings import Settings
from tests.connectors.deliveries import TENANT, make_delivery, make_destination
from tests.delivery.harness import RunningWorker, StatusLog
from tests.fakes.graph import FakeGraph
from tests.fakes.loopback import loopback_options
from tests.streams_helpers import make_event, next_change, produce_events, running_fanout

EMAIL = "jane@acme.com"


@pytest.fixture
def fake() -> Iterator[FakeGraph]:
    with FakeGraph() as graph:
        graph.add_mailbox(EMAIL)
        yield graph


async def open_connector(fake: FakeGraph, secret: str | None = None, **settings: Any) -> GraphConnector:
    destination = make_destination("graph", fake.settings(**settings))
    connector = GraphConnector(
        destination, {"client_secret": SecretStr(secret or fake.client_secret)}, loopback_options()
    )
    await connector.setup()
    return connector


@pytest.fixture
async def connector(fake: FakeGraph) -> AsyncIterator[GraphConnector]:
    connector = await open_connector(fake)
    yield connector
    await connector.close()


def events(fake: FakeGraph) -> list[dict[str, Any]]:
    return list(fake.mailboxes[EMAIL].values())


async def test_registered_under_graph() -> None:
    assert connector_class("graph") is GraphConnector


async def test_create_update_delete_and_delete_when_gone(fake: FakeGraph, connector: GraphConnector) -> None:
    recorder = CallRecorder(connector.secrets)
    outcome = await connector.deliver(make_delivery(), recorder)
    [event] = events(fake)
    assert outcome.external_id == event["id"]
    assert event["subject"] == "Absent"
    assert (event["showAs"], event["sensitivity"], event["isReminderOn"]) == ("oof", "private", False)
    assert event["isAllDay"] is True
    assert event["start"] == {"dateTime": "2026-03-30T00:00:00", "timeZone": "Europe/Paris"}
    assert event["end"] == {"dateTime": "2026-03-31T00:00:00", "timeZone": "Europe/Paris"}

    moved = make_delivery(end=dt.date(2026, 4, 1), change=ChangeKind.UPDATED, version=2)
    await connector.deliver(moved, CallRecorder())
    [updated] = events(fake)
    assert updated["id"] == event["id"]
    assert updated["end"]["dateTime"] == "2026-04-02T00:00:00"
    assert [r.method for r in fake.requests if r.path.startswith("/v1.0")][-2:] == ["GET", "PATCH"]

    cancelled = make_delivery(change=ChangeKind.CANCELLED, status=AbsenceStatus.CANCELLED, version=3)
    await connector.deliver(cancelled, CallRecorder())
    assert events(fake) == []
    outcome = await connector.deliver(cancelled, CallRecorder())
    assert "removed 0" in outcome.summary


async def test_same_delivery_twice_makes_one_event_and_recreation_after_delete_works(
    fake: FakeGraph, connector: GraphConnector
) -> None:
    delivery = make_delivery()
    await connector.deliver(delivery, CallRecorder())
    await connector.deliver(delivery, CallRecorder())
    assert len(events(fake)) == 1

    await connector.deliver(make_delivery(change=ChangeKind.DELETED, version=2), CallRecorder())
    assert events(fake) == []
    await connector.deliver(make_delivery(change=ChangeKind.UPDATED, version=3), CallRecorder())
    assert len(events(fake)) == 1


async def test_repeated_create_after_a_lost_answer_is_discarded_by_transaction_id(
    fake: FakeGraph, connector: GraphConnector
) -> None:
    delivery = make_delivery()
    await connector.deliver(delivery, CallRecorder())
    [event] = events(fake)
    # The first create's event exists but is not tagged (as if the lookup could not see it yet):
    # the repeated POST carries the same transactionId and Exchange returns the existing event.
    event["singleValueExtendedProperties"] = []
    outcome = await connector.deliver(delivery, CallRecorder())
    assert len(events(fake)) == 1
    assert outcome.external_id == event["id"]


async def test_duplicates_of_one_absence_are_healed_to_one_event(
    fake: FakeGraph, connector: GraphConnector
) -> None:
    await connector.deliver(make_delivery(), CallRecorder())
    [event] = events(fake)
    fake.mailboxes[EMAIL]["AAMk-copy"] = {**event, "id": "AAMk-copy", "transactionId": "other"}
    with structlog.testing.capture_logs() as logged:
        await connector.deliver(make_delivery(change=ChangeKind.UPDATED, version=2), CallRecorder())
    assert [e["id"] for e in events(fake)] == [event["id"]]
    [removed] = [line for line in logged if line["event"] == "graph_duplicate_event_removed"]
    assert removed["mailbox"] == "…@" + EMAIL.rpartition("@")[2], "a log names no mailbox (docs/privacy.md)"
    assert EMAIL not in repr(logged)


async def test_half_day_and_hourly_absences_in_paris(fake: FakeGraph, connector: GraphConnector) -> None:
    afternoon = make_delivery(absence_id="abs-pm", start_half=HalfDay.PM, end_half=HalfDay.PM)
    hourly = make_delivery(absence_id="abs-h", start_time="10:00", end_time="11:30")
    await connector.deliver(afternoon, CallRecorder())
    await connector.deliver(hourly, CallRecorder())
    spans = sorted((e["start"]["dateTime"], e["end"]["dateTime"], e["isAllDay"]) for e in events(fake))
    assert spans == [
        ("2026-03-30T10:00:00", "2026-03-30T11:30:00", False),
        ("2026-03-30T13:30:00", "2026-03-30T18:00:00", False),
    ]
    assert {e["start"]["timeZone"] for e in events(fake)} == {"Europe/Paris"}


async def test_pending_is_hidden_unless_include_pending_then_tentative(fake: FakeGraph) -> None:
    pending = make_delivery(status=AbsenceStatus.PENDING, change=ChangeKind.CREATED)
    hiding = await open_connector(fake)
    showing = await open_connector(fake, include_pending=True, title_template="{employee_name} (off)")
    try:
        await hiding.deliver(pending, CallRecorder())
        assert events(fake) == []
        await showing.deliver(pending, CallRecorder())
        [event] = events(fake)
        assert (event["showAs"], event["subject"]) == ("tentative", "Jane Doe (off)")
    finally:
        await hiding.close()
        await showing.close()


async def test_throttling_is_backpressure_with_retry_after(
    fake: FakeGraph, connector: GraphConnector
) -> None:
    fake.throttle(retry_after=42)
    with pytest.raises(BackpressureError) as caught:
        await connector.deliver(make_delivery(), CallRecorder())
    assert caught.value.retry_after == 42
    assert caught.value.status_code == 429
    await connector.deliver(make_delivery(), CallRecorder())
    assert len(events(fake)) == 1


async def test_busy_service_with_retry_after_is_backpressure(
    fake: FakeGraph, connector: GraphConnector
) -> None:
    fake.fail(503, code="ConcurrentItemSave", retry_after=5)
    with pytest.raises(BackpressureError) as caught:
        await connector.deliver(make_delivery(), CallRecorder())
    assert (caught.value.retry_after, caught.value.status_code) == (5, 503)


async def test_access_denied_is_permanent_and_names_the_permission(
    fake: FakeGraph, connector: GraphConnector
) -> None:
    fake.fail(403, code="ErrorAccessDenied")
    with pytest.raises(PermanentError, match=re.escape("Calendars.ReadWrite")) as caught:
        await connector.deliver(make_delivery(), CallRecorder())
    assert not isinstance(caught.value, ConfigurationError) and caught.value.status_code == 403


async def test_unknown_tenant_is_a_configuration_error(fake: FakeGraph) -> None:
    connector = await open_connector(fake, tenant_id="no-such-tenant")
    try:
        with pytest.raises(ConfigurationError, match="no-such-tenant"):
            await connector.test_connection(CallRecorder())
    finally:
        await connector.close()


async def test_server_errors_are_retryable(fake: FakeGraph, connector: GraphConnector) -> None:
    fake.fail(500, code="InternalServerError")
    with pytest.raises(RetryableError) as caught:
        await connector.deliver(make_delivery(), CallRecorder())
    assert not isinstance(caught.value, BackpressureError)


async def test_unknown_mailbox_is_permanent_with_a_clear_message(connector: GraphConnector) -> None:
    with pytest.raises(PermanentError, match=re.escape("no mailbox for ghost@acme.com")):
        await connector.deliver(make_delivery(email="ghost@acme.com"), CallRecorder())


async def test_wrong_secret_is_a_configuration_error(fake: FakeGraph) -> None:
    connector = await open_connector(fake, secret="not-the-secret")
    recorder = CallRecorder(connector.secrets)
    try:
        with pytest.raises(ConfigurationError, match="invalid_client"):
            await connector.test_connection(recorder)
    finally:
        await connector.close()
    assert any(call.response_status == 401 for call in recorder.calls)


async def test_token_is_cached_until_it_expires(fake: FakeGraph, connector: GraphConnector) -> None:
    outcome = await connector.test_connection(CallRecorder())
    assert "token acquired" in outcome.summary
    await connector.deliver(make_delivery(), CallRecorder())
    assert fake.token_requests == 1

    fake.token_lifetime = 60  # msal renews tokens with less than five minutes left: every call gets one
    graph_calls_before = sum(r.path.startswith("/v1.0") for r in fake.requests)
    short = await open_connector(fake)
    try:
        await short.deliver(make_delivery(absence_id="abs-2"), CallRecorder())
    finally:
        await short.close()
    graph_calls = sum(r.path.startswith("/v1.0") for r in fake.requests) - graph_calls_before
    assert graph_calls == 2  # lookup, create
    assert fake.token_requests == 1 + graph_calls


async def test_a_valid_kept_token_takes_no_thread(fake: FakeGraph, connector: GraphConnector) -> None:
    """msal runs on the destination's threads only when a token is needed: with those threads shut
    (any call on them would fail), a delivery with a valid token still goes through."""
    await connector.deliver(make_delivery(), CallRecorder())
    connector.release_threads()

    recorder = CallRecorder()
    await connector.deliver(make_delivery(absence_id="abs-2"), recorder)

    assert fake.token_requests == 1
    assert not any("/oauth2/v2.0/token" in call.url for call in recorder.calls)
    assert len(fake.mailboxes[EMAIL]) == 2


async def test_secrets_never_appear_in_recorded_calls(fake: FakeGraph, connector: GraphConnector) -> None:
    recorder = CallRecorder(connector.secrets)
    await connector.deliver(make_delivery(), recorder)
    assert any("/oauth2/v2.0/token" in call.url for call in recorder.calls)
    assert any(call.method == "POST" and "/events" in call.url for call in recorder.calls)
    issued = [
        r.headers["authorization"].removeprefix("Bearer ")
        for r in fake.requests
        if "authorization" in r.headers
    ]
    recorded = repr(recorder.calls)
    assert fake.client_secret not in recorded
    assert issued and all(token not in recorded for token in issued)


def test_missing_settings_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="tenant_id"):
        GraphConnector(make_destination("graph", {"client_id": "x"}), {})
    with pytest.raises(ConfigurationError, match="morning_hours"):
        GraphConnector(
            make_destination("graph", {"tenant_id": "t", "client_id": "x", "morning_hours": "?"}), {}
        )


# -- end to end -------------------------------------------------------------------------------------


@pytest.mark.kafka
def test_an_absence_on_the_topic_reaches_the_calendar_and_its_cancellation_removes_it(
    settings: Settings, fake: FakeGraph
) -> None:
    box = SecretBox.from_settings(settings)
    settings_json = fake.settings()
    destination = Destination(
        id="dst-o365",
        tenant=TENANT,
        name="Office 365",
        kind="graph",
        settings=settings_json,
        secrets={"client_secret": box.encrypt(fake.client_secret)},
        revision=1,
    )
    publish_destination(settings, destination)
    approved = make_event(change=ChangeKind.APPROVED, status=AbsenceStatus.APPROVED, email=EMAIL)
    cancelled = next_change(approved, ChangeKind.CANCELLED, AbsenceStatus.CANCELLED)
    statuses = StatusLog(settings)
    try:
        with running_fanout(settings), RunningWorker(settings):
            produce_events(settings, [approved])
            created = statuses.wait_settled(delivery_id_for(destination.id, approved.event_id, "UPSERT"))
            held = [dict(e) for e in events(fake)]
            produce_events(settings, [cancelled])
            deleted = statuses.wait_settled(delivery_id_for(destination.id, cancelled.event_id, "DELETE"))
    finally:
        statuses.close()

    assert created.status is Status.SUCCESSFUL, created.error
    [event] = held
    assert event["singleValueExtendedProperties"][0]["value"] == absence_tag(TENANT, approved.absence.id)
    assert (event["start"]["dateTime"], event["end"]["dateTime"]) == (
        "2026-05-04T00:00:00",
        "2026-05-07T00:00:00",
    )
    assert deleted.status is Status.SUCCESSFUL, deleted.error
    assert events(fake) == []
    assert fake.client_secret not in json.dumps(dataclasses.asdict(created), default=str)
