"""The EWS connector with the real exchangelib against a local Exchange fake (tests/fakes/ews.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from exchangelib import Build, Configuration, Credentials, FailFast, Version
from exchangelib import errors as ews_errors
from exchangelib.protocol import Protocol
from exchangelib.services import ResolveNames
from lxml import etree
from pydantic import SecretStr

from connectors.base import CallRecorder, ConnectorOptions, DeliveryOutcome
from connectors.calendar import absence_tag
from connectors.ews import AbsenceTagProperty, EwsConnector
from connectors.ews_protocol import ThrottleSafeProtocol
from connectors.exceptions import (
    BackpressureError,
    ConfigurationError,
    PermanentError,
    RetryableError,
)
from connectors.registry import connector_class
from schemas.delivery import Delivery, Operation, Status, delivery_id_for
from schemas.destination import Destination
from schemas.models import AbsenceStatus, ChangeKind, HalfDay
from streams.destinations import publish_destination
from streams.logging import MASK
from streams.secrets import SecretBox
from streams.settings import Settings
from tests.connectors.deliveries import TENANT, make_delivery, make_destination
from tests.delivery.harness import Feed, RunningWorker, StatusLog
from tests.fakes.ews import FakeExchange, M, StoredItem
from tests.fakes.loopback import loopback_options
from tests.streams_helpers import make_event, next_change, produce_events, running_fanout

JANE = "jane@acme.com"
TAG_KEY = (AbsenceTagProperty.property_set_id, AbsenceTagProperty.property_name)


@pytest.fixture
def exchange() -> Iterator[FakeExchange]:
    with FakeExchange() as fake:
        fake.add_mailbox(JANE)
        yield fake


def make_connector(exchange: FakeExchange, password: str | None = None, **settings: Any) -> EwsConnector:
    values = {
        "server_url": exchange.url,
        "auth_type": "basic",
        "server_version": "Exchange2016",
        "username": exchange.username,
        **settings,
    }
    secrets = {"password": SecretStr(password or exchange.password)}
    return EwsConnector(make_destination("ews", values), secrets, loopback_options(5))


@pytest.fixture
async def connector(exchange: FakeExchange) -> AsyncIterator[EwsConnector]:
    conn = make_connector(exchange)
    await conn.setup()
    yield conn
    await conn.close()


async def deliver(connector: EwsConnector, delivery: Delivery) -> tuple[DeliveryOutcome, CallRecorder]:
    recorder = CallRecorder(connector.secrets)
    return await connector.deliver(delivery, recorder), recorder


def only_item(exchange: FakeExchange, mailbox: str = JANE) -> StoredItem:
    items = exchange.items(mailbox)
    assert len(items) == 1, items
    return items[0]


def operation_attributes(exchange: FakeExchange, operation: str) -> list[dict[str, str]]:
    """The attributes of every ``operation`` element the fake received."""
    out = []
    for call in exchange.calls:
        if call.operation == operation:
            root = etree.fromstring(call.body.encode())
            out.append(dict(root.find(f".//{{{M}}}{operation}").attrib))
    return out


# -- upsert -----------------------------------------------------------------------------------------


async def test_creates_a_private_out_of_office_all_day_item_tagged_with_the_absence(
    exchange: FakeExchange, connector: EwsConnector
) -> None:
    outcome, _ = await deliver(connector, make_delivery(start=dt.date(2026, 3, 30), end=dt.date(2026, 3, 31)))

    item = only_item(exchange)
    assert item.subject == "Absent"  # the default title hides "Sick leave"
    assert item.is_all_day
    assert item.fields["LegacyFreeBusyStatus"] == "OOF"
    assert item.fields["Sensitivity"] == "Private"
    assert item.fields["ReminderIsSet"] == "false"
    assert item.extended[TAG_KEY] == absence_tag(TENANT, "abs-1")
    paris = ZoneInfo("Europe/Paris")
    assert item.local("start") == dt.datetime(2026, 3, 30, tzinfo=paris)
    assert item.local("end") == dt.datetime(2026, 4, 1, tzinfo=paris)  # exclusive end, after the last day
    assert item.start_time_zone == item.end_time_zone == "Romance Standard Time"
    assert outcome.external_id == item.item_id
    assert "created" in outcome.summary
    [create] = operation_attributes(exchange, "CreateItem")
    assert create == {"MessageDisposition": "SaveOnly", "SendMeetingInvitations": "SendToNone"}
    assert exchange.calls[0].headers["x-anchormailbox"] == JANE


async def test_a_new_version_updates_the_same_item_in_place(
    exchange: FakeExchange, connector: EwsConnector
) -> None:
    await deliver(connector, make_delivery(start=dt.date(2026, 3, 30), version=1))
    created = only_item(exchange)

    outcome, _ = await deliver(
        connector,
        make_delivery(
            start=dt.date(2026, 4, 6), end=dt.date(2026, 4, 7), change=ChangeKind.UPDATED, version=2
        ),
    )

    item = only_item(exchange)
    assert item.item_id == created.item_id
    assert item.local("start") == dt.datetime(2026, 4, 6, tzinfo=ZoneInfo("Europe/Paris"))
    assert item.local("end") == dt.datetime(2026, 4, 8, tzinfo=ZoneInfo("Europe/Paris"))
    assert "updated" in outcome.summary
    assert exchange.operations().count("CreateItem") == 1
    [update] = operation_attributes(exchange, "UpdateItem")
    assert update["SendMeetingInvitationsOrCancellations"] == "SendToNone"
    assert update["MessageDisposition"] == "SaveOnly"


async def test_the_same_delivery_twice_leaves_one_item(
    exchange: FakeExchange, connector: EwsConnector
) -> None:
    delivery = make_delivery(start=dt.date(2026, 5, 4))

    await deliver(connector, delivery)
    first = only_item(exchange)
    await deliver(connector, delivery)

    second = only_item(exchange)
    assert second.item_id == first.item_id
    assert (second.start, second.end, second.subject) == (first.start, first.end, first.subject)
    assert exchange.operations().count("CreateItem") == 1


async def test_a_retry_after_a_lost_create_response_updates_the_created_item(
    exchange: FakeExchange, connector: EwsConnector
) -> None:
    delivery = make_delivery(start=dt.date(2026, 5, 4))
    exchange.lose_response_next("CreateItem")

    with pytest.raises(RetryableError):
        await deliver(connector, delivery)
    created = only_item(exchange)  # Exchange did create it; we could not know
    await deliver(connector, delivery)

    assert only_item(exchange).item_id == created.item_id
    assert exchange.operations().count("CreateItem") == 1
    assert exchange.operations()[-1] == "UpdateItem"


async def test_an_upsert_removes_duplicates_left_by_an_earlier_failure(
    exchange: FakeExchange, connector: EwsConnector
) -> None:
    await deliver(connector, make_delivery(start=dt.date(2026, 5, 4)))
    original = only_item(exchange)
    copy = dataclasses.replace(original, item_id="duplicate-id", extended=dict(original.extended))
    exchange.mailboxes[JANE].items[copy.item_id] = copy

    outcome, _ = await deliver(connector, make_delivery(start=dt.date(2026, 5, 5), version=2))

    assert only_item(exchange).item_id == original.item_id
    assert outcome.details == {"duplicates_removed": 1}


async def test_a_half_day_in_new_york_uses_the_morning_hours_in_that_zone(
    exchange: FakeExchange, connector: EwsConnector
) -> None:
    await deliver(
        connector,
        make_delivery(
            start=dt.date(2026, 12, 1),
            start_half=HalfDay.AM,
            end_half=HalfDay.AM,
            time_zone="America/New_York",
        ),
    )

    item = only_item(exchange)
    assert not item.is_all_day
    assert item.start_time_zone == "Eastern Standard Time"
    assert item.start == dt.datetime(2026, 12, 1, 14, 0, tzinfo=dt.UTC)  # 09:00 EST
    assert item.end == dt.datetime(2026, 12, 1, 17, 30, tzinfo=dt.UTC)  # 12:30 EST


async def test_an_hourly_absence_in_kolkata_keeps_its_local_times(
    exchange: FakeExchange, connector: EwsConnector
) -> None:
    await deliver(
        connector,
        make_delivery(
            start=dt.date(2026, 7, 15), start_time="14:00", end_time="16:15", time_zone="Asia/Kolkata"
        ),
    )

    item = only_item(exchange)
    assert not item.is_all_day
    assert item.start_time_zone == "India Standard Time"
    assert item.start == dt.datetime(2026, 7, 15, 8, 30, tzinfo=dt.UTC)  # UTC+05:30
    assert item.end == dt.datetime(2026, 7, 15, 10, 45, tzinfo=dt.UTC)


async def test_a_pending_absence_is_tentative_only_when_the_destination_includes_pending(
    exchange: FakeExchange,
) -> None:
    pending = make_delivery(status=AbsenceStatus.PENDING, change=ChangeKind.CREATED)
    strict, lenient = (
        make_connector(exchange),
        make_connector(exchange, include_pending=True, mark_private=False),
    )
    for conn in (strict, lenient):
        await conn.setup()
    try:
        await deliver(strict, pending)
        assert exchange.items(JANE) == []

        await deliver(lenient, pending)
        item = only_item(exchange)
        assert item.fields["LegacyFreeBusyStatus"] == "Tentative"
        assert item.fields["Sensitivity"] == "Normal"

        # The strict destination must not hold it: a pending upsert there removes the item.
        await deliver(strict, pending)
        assert exchange.items(JANE) == []
    finally:
        for conn in (strict, lenient):
            await conn.close()


async def test_the_title_template_may_show_the_leave_type_when_allowed(exchange: FakeExchange) -> None:
    conn = make_connector(
        exchange, title_template="{employee_name}: {leave_category_name}", show_leave_type=True
    )
    await conn.setup()
    try:
        await deliver(conn, make_delivery())
    finally:
        await conn.close()
    assert only_item(exchange).subject == "Jane Doe: Sickness"


# -- delete -----------------------------------------------------------------------------------------


async def test_a_cancellation_hard_deletes_the_item_without_notifying(
    exchange: FakeExchange, connector: EwsConnector
) -> None:
    await deliver(connector, make_delivery())
    created = only_item(exchange)

    outcome, _ = await deliver(
        connector, make_delivery(change=ChangeKind.CANCELLED, status=AbsenceStatus.CANCELLED, version=2)
    )

    assert exchange.items(JANE) == []
    assert outcome.external_id == created.item_id
    [delete] = operation_attributes(exchange, "DeleteItem")
    assert delete["DeleteType"] == "HardDelete"
    assert delete["SendMeetingCancellations"] == "SendToNone"


async def test_deleting_an_absence_that_is_not_there_succeeds(
    exchange: FakeExchange, connector: EwsConnector
) -> None:
    outcome, _ = await deliver(
        connector, make_delivery(change=ChangeKind.DELETED, operation=Operation.DELETE)
    )

    assert "already gone" in outcome.summary
    assert outcome.external_id is None
    assert "DeleteItem" not in exchange.operations()


async def test_deleting_twice_succeeds_twice(exchange: FakeExchange, connector: EwsConnector) -> None:
    await deliver(connector, make_delivery())
    deletion = make_delivery(change=ChangeKind.DELETED, status=AbsenceStatus.CANCELLED, version=2)

    first, _ = await deliver(connector, deletion)
    second, _ = await deliver(connector, deletion)

    assert "deleted" in first.summary
    assert "already gone" in second.summary
    assert exchange.items(JANE) == []
    assert exchange.operations().count("DeleteItem") == 1


# -- errors -----------------------------------------------------------------------------------------


async def test_server_busy_is_backpressure_with_the_servers_back_off_and_no_retry_inside(
    exchange: FakeExchange, connector: EwsConnector
) -> None:
    exchange.busy_next(back_off_ms=2500)

    with pytest.raises(BackpressureError) as caught:
        await deliver(connector, make_delivery())

    assert caught.value.retry_after == 2.5
    assert "ErrorServerBusy" in caught.value.message
    assert len(exchange.calls) == 1  # exchangelib did not retry by itself (FailFast)
    assert exchange.items(JANE) == []
    await deliver(connector, make_delivery())  # the next attempt goes through
    only_item(exchange)


async def test_server_busy_without_a_back_off_uses_the_normal_ladder_not_an_invented_one(
    exchange: FakeExchange, connector: EwsConnector
) -> None:
    exchange.busy_next(back_off_ms=None)

    with pytest.raises(BackpressureError) as caught:
        await deliver(connector, make_delivery())

    assert caught.value.retry_after is None  # exchangelib's invented 10 s is not passed on
    assert "no back-off given" in caught.value.message
    assert len(exchange.calls) == 1


async def test_a_503_with_retry_after_is_honoured(exchange: FakeExchange, connector: EwsConnector) -> None:
    exchange.fail_next(status=503, retry_after=30)

    with pytest.raises(BackpressureError) as caught:
        await deliver(connector, make_delivery())

    assert caught.value.retry_after == 30 and caught.value.status_code == 503


async def test_throttling_half_the_calls_never_deadlocks_and_every_delivery_gets_through(
    exchange: FakeExchange,
) -> None:
    """12 deliveries at once through 4 sessions, every other call throttled (busy with and without
    BackOffMilliseconds, 503): each attempt ends, as a success or a retryable error (exchangelib
    5.6's plain Protocol deadlocked here); once throttling stops, every delivery succeeds."""
    mailboxes = [f"user{i}@acme.com" for i in range(12)]
    for mailbox in mailboxes:
        exchange.add_mailbox(mailbox)
    conn = make_connector(exchange, max_connections=4)
    await conn.setup()
    outcomes: dict[str, list[str]] = {m: [] for m in mailboxes}
    back_offs: set[float | None] = set()

    async def until_delivered(mailbox: str, throttled_rounds: int) -> None:
        for round_ in range(throttled_rounds + 20):
            try:
                await deliver(conn, make_delivery(absence_id=f"abs-{mailbox}", email=mailbox))
            except RetryableError as exc:  # what the worker sends to a retry topic
                outcomes[mailbox].append(type(exc).__name__)
                if isinstance(exc, BackpressureError):
                    back_offs.add(exc.retry_after)
                if round_ == throttled_rounds:
                    exchange.stop_throttling()
                continue
            outcomes[mailbox].append("ok")
            return

    exchange.throttle_half(back_off_ms=1500)
    try:
        async with asyncio.timeout(120):  # liveness: a deadlock would hang here
            await asyncio.gather(*(until_delivered(m, 3) for m in mailboxes))
    finally:
        exchange.stop_throttling()
        await conn.close()
        conn.release_threads()

    assert all(o[-1] == "ok" for o in outcomes.values()), outcomes
    assert all(len(exchange.items(m)) == 1 for m in mailboxes)
    assert min(exchange.throttled.values()) >= 1, exchange.throttled
    assert 1.5 in back_offs and None in back_offs  # Exchange's back-off when sent, none otherwise
    assert conn._executor is not None and conn._executor.alive <= 4


def _backoff_returns_with_every_session_in_use(protocol: Any) -> bool:
    """exchangelib's own server-busy path (``EWSService._handle_backoff``, as under ``FailFast``) run
    while every session of a pool below its maximum size is in use; True if it returned."""
    held = [protocol.get_session(), protocol.get_session()]  # 2 of 3 sessions, none free
    done = threading.Event()

    def backoff() -> None:
        with contextlib.suppress(Exception):  # FailFast re-raises the server-busy error
            ResolveNames(protocol=protocol)._handle_backoff(ews_errors.ErrorServerBusy("busy"))
        done.set()

    threading.Thread(target=backoff, name="ews-backoff", daemon=True).start()
    returned = done.wait(10)
    for session in held:
        protocol.release_session(session)
    return returned


def test_the_pool_cannot_deadlock_where_exchangelibs_own_protocol_does(exchange: FakeExchange) -> None:
    """exchangelib 5.6: shrinking the pool on server-busy takes the pool lock, then waits for a
    session by growing the pool, which takes the same lock. ThrottleSafeProtocol never shrinks."""
    config = Configuration(
        service_endpoint=exchange.url,
        credentials=Credentials(exchange.username, exchange.password),
        auth_type="basic",
        version=Version(build=Build(15, 1)),
        retry_policy=FailFast(),
        max_connections=3,
    )
    assert _backoff_returns_with_every_session_in_use(ThrottleSafeProtocol.build(config, timeout=5))
    # The control: exchangelib's own Protocol (outside its cache) deadlocks on the same path, its
    # thread blocked for good (a daemon thread, left behind).
    plain = type.__call__(Protocol, config=config)
    assert not _backoff_returns_with_every_session_in_use(plain)


async def test_an_unknown_mailbox_is_a_permanent_error_naming_it(
    exchange: FakeExchange, connector: EwsConnector
) -> None:
    with pytest.raises(PermanentError) as caught:
        await deliver(connector, make_delivery(email="ghost@acme.com"))

    assert not isinstance(caught.value, ConfigurationError)
    assert "no mailbox for ghost@acme.com" in caught.value.message
    assert "ErrorNonExistentMailbox" in caught.value.message


async def test_impersonation_denied_is_a_configuration_error_naming_the_role(
    exchange: FakeExchange, connector: EwsConnector
) -> None:
    exchange.impersonation_allowed = False

    with pytest.raises(ConfigurationError) as caught:
        await deliver(connector, make_delivery())

    assert "ApplicationImpersonation" in caught.value.message
    assert JANE in caught.value.message


async def test_a_wrong_password_is_a_configuration_error(exchange: FakeExchange) -> None:
    conn = make_connector(exchange, password="not-the-password")
    await conn.setup()
    try:
        with pytest.raises(ConfigurationError) as caught:
            await deliver(conn, make_delivery())
    finally:
        await conn.close()
    assert caught.value.status_code == 401
    assert "credentials" in caught.value.message


@pytest.mark.parametrize("status", [500, 503])
async def test_a_server_error_is_retryable(
    exchange: FakeExchange, connector: EwsConnector, status: int
) -> None:
    exchange.fail_next(status=status)

    with pytest.raises(RetryableError) as caught:
        await deliver(connector, make_delivery())

    assert not isinstance(caught.value, BackpressureError)  # no back-off asked for by the server
    assert caught.value.status_code == status
    assert len(exchange.calls) == 1


async def test_a_server_that_does_not_answer_is_retryable(exchange: FakeExchange) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conn = make_connector(exchange, server_url=f"http://127.0.0.1:{port}/EWS/Exchange.asmx")
    await conn.setup()
    try:
        with pytest.raises(RetryableError) as caught:
            await deliver(conn, make_delivery())
    finally:
        await conn.close()
    assert "Exchange" in caught.value.message


# -- recording and secrets --------------------------------------------------------------------------


async def test_calls_are_recorded_with_bodies_and_without_secrets(
    exchange: FakeExchange, connector: EwsConnector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    outcome, recorder = await deliver(connector, make_delivery())

    assert [c.response_status for c in recorder.calls] == [200] * len(exchange.calls)
    create = next(c for c in recorder.calls if "<m:CreateItem" in c.request_body)
    assert create.method == "POST"
    assert create.url == exchange.url
    assert create.request_headers["Authorization"] == MASK
    assert outcome.external_id is not None
    assert outcome.external_id in (create.response_body or "")
    credentials = base64.b64encode(f"{exchange.username}:{exchange.password}".encode()).decode()
    recorded = json.dumps([dataclasses.asdict(c) for c in recorder.calls], default=str)
    for secret in (exchange.password, credentials):
        assert secret not in recorded
        assert secret not in caplog.text  # exchangelib logs headers at DEBUG: kept quiet


async def test_test_connection_opens_the_test_mailbox_calendar(exchange: FakeExchange) -> None:
    conn = make_connector(exchange, test_mailbox=JANE)
    await conn.setup()
    try:
        recorder = CallRecorder(conn.secrets)
        outcome = await conn.test_connection(recorder)
    finally:
        await conn.close()
    assert JANE in outcome.summary
    assert exchange.operations() == ["GetFolder", "GetFolder"]
    assert len(recorder.calls) == 2


# -- configuration ----------------------------------------------------------------------------------


def test_the_registry_knows_the_ews_kind() -> None:
    assert connector_class("ews") is EwsConnector


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"auth_type": "kerberos"}, "auth_type"),
        ({"server_version": "Exchange2007"}, "server_version"),
        ({"server_url": "mail.acme.com"}, "server_url"),
        ({"username": ""}, "username"),
        ({"max_connections": 0}, "max_connections"),
        ({"title_template": "{leave_account_name}"}, "show_leave_type"),
    ],
)
def test_bad_settings_are_refused_before_any_call(
    exchange: FakeExchange, settings: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        make_connector(exchange, **settings)
    assert exchange.calls == []


async def test_a_missing_password_is_a_configuration_error(exchange: FakeExchange) -> None:
    conn = EwsConnector(
        make_destination("ews", {"server_url": exchange.url, "username": exchange.username}),
        {},
        ConnectorOptions(),
    )
    with pytest.raises(ConfigurationError, match="password"):
        await conn.setup()


# -- end to end -------------------------------------------------------------------------------------


@pytest.mark.kafka
def test_an_absence_on_the_topic_reaches_the_mailbox_and_its_cancellation_removes_it(
    settings: Settings, exchange: FakeExchange
) -> None:
    box = SecretBox.from_settings(settings)
    destination = Destination(
        id="dst-exchange",
        tenant="acme",
        name="Exchange on-premises",
        kind="ews",
        settings={"server_url": exchange.url, "auth_type": "basic", "username": exchange.username},
        secrets={"password": box.encrypt(exchange.password)},
        revision=1,
    )
    publish_destination(settings, destination)
    approved = make_event(change=ChangeKind.APPROVED, status=AbsenceStatus.APPROVED, email=JANE)
    cancelled = next_change(approved, ChangeKind.CANCELLED, AbsenceStatus.CANCELLED)
    statuses = StatusLog(settings)
    try:
        with running_fanout(settings), RunningWorker(settings):
            produce_events(settings, [approved])
            created = statuses.wait_settled(delivery_id_for(destination.id, approved.event_id, "UPSERT"))
            items_after_approval = exchange.items(JANE)

            produce_events(settings, [cancelled])
            deleted = statuses.wait_settled(delivery_id_for(destination.id, cancelled.event_id, "DELETE"))
    finally:
        statuses.close()

    assert created.status is Status.SUCCESSFUL, created.error
    [item] = items_after_approval
    assert item.extended[TAG_KEY] == absence_tag("acme", approved.absence.id)
    assert item.local("start") == dt.datetime(2026, 5, 4, tzinfo=ZoneInfo("Europe/Paris"))
    assert deleted.status is Status.SUCCESSFUL, deleted.error
    assert exchange.items(JANE) == []
    attempt = created.attempt_record
    assert attempt is not None and exchange.password not in json.dumps(
        dataclasses.asdict(attempt), default=str
    )


@pytest.mark.kafka
def test_under_throttling_every_delivery_ends_successful_or_in_a_retry_topic(
    settings: Settings, exchange: FakeExchange
) -> None:
    """Half the calls throttled (busy with and without BackOffMilliseconds, 503), 10 deliveries at
    once through the worker: each one's attempt ends, successful or PENDING in a retry topic; once
    the throttling stops, none stays PENDING."""
    box = SecretBox.from_settings(settings)
    publish_destination(
        settings,
        Destination(
            id="dst-exchange",
            tenant=TENANT,
            name="Exchange on-premises",
            kind="ews",
            settings={
                "server_url": exchange.url,
                "auth_type": "basic",
                "username": exchange.username,
                "max_connections": 4,
            },
            secrets={"password": box.encrypt(exchange.password)},
            revision=1,
        ),
    )
    mailboxes = [f"user{i}@acme.com" for i in range(10)]
    for mailbox in mailboxes:
        exchange.add_mailbox(mailbox)
    deliveries = [
        make_delivery(absence_id=f"abs-t{i}", email=mailbox, destination_id="dst-exchange")
        for i, mailbox in enumerate(mailboxes)
    ]
    statuses = StatusLog(settings)
    exchange.throttle_half(back_off_ms=1500)
    try:
        with RunningWorker(settings):
            Feed(settings).deliveries(*deliveries)
            statuses.wait(lambda log: all(log.latest(d.delivery_id) for d in deliveries), timeout=120)
            first = {d.delivery_id: statuses.of(d.delivery_id)[0] for d in deliveries}
            exchange.stop_throttling()
            statuses.wait(
                lambda log: all(log.latest(d.delivery_id) is Status.SUCCESSFUL for d in deliveries),
                timeout=120,
            )
    finally:
        exchange.stop_throttling()
        statuses.close()

    assert all(e.status in (Status.SUCCESSFUL, Status.PENDING) for e in first.values())
    retried = [e for e in first.values() if e.status is Status.PENDING]
    assert retried and all(e.next_retry_at is not None for e in retried)
    assert min(exchange.throttled.values()) >= 1, exchange.throttled
    assert all(len(exchange.items(m)) == 1 for m in mailboxes)
