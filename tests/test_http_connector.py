"""The http connector against a real loopback receiver (tests/fakes/receiver.py): no broker needed."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import email.utils
import inspect
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.base import CallRecorder
from connectors.exceptions import (
    BackpressureError,
    ConfigurationError,
    ConnectorError,
    PermanentError,
    RetryableError,
)
from connectors.http import HttpConnector
from connectors.registry import connector_class
from connectors.wire import parse_retry_after
from schemas.delivery import Delivery, Operation, delivery_id_for
from schemas.destination import Destination
from schemas.models import (
    Absence,
    AbsenceEvent,
    AbsenceStatus,
    ChangeKind,
    Employee,
    HalfDay,
    LeaveAccount,
)
from streams.logging import MASK
from tests.fakes.loopback import loopback_options
from tests.fakes.receiver import Receiver, verify_webhook

SECRET = "whsec_" + base64.b64encode(b"new-secret-0123456789abcdef-0123").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"old-secret-0123456789abcdef-0123").decode()
DOC = Path(__file__).resolve().parent.parent / "docs" / "http-sync.md"


# -- builders ---------------------------------------------------------------------------------------


def make_event(
    absence_id: str = "abs-1",
    *,
    change: ChangeKind = ChangeKind.APPROVED,
    status: AbsenceStatus = AbsenceStatus.APPROVED,
    start: tuple[dt.date, HalfDay] = (dt.date(2026, 3, 2), HalfDay.AM),
    end: tuple[dt.date, HalfDay] = (dt.date(2026, 3, 3), HalfDay.PM),
    version: int = 1,
) -> AbsenceEvent:
    return AbsenceEvent(
        event_id=f"evt-{absence_id}-{version}",
        occurred_at=dt.datetime(2026, 2, 20, 9, 30, tzinfo=dt.UTC),
        tenant="acme",
        change=change,
        version=version,
        absence=Absence(
            id=absence_id,
            status=status,
            start_date=start[0],
            start_half=start[1],
            end_date=end[0],
            end_half=end[1],
            time_zone="Europe/Paris",
            leave_account=LeaveAccount(
                id="1718", name="Paid leave 2026", category_id="1", category_name="Paid leave"
            ),
            approved_at=dt.datetime(2026, 2, 21, 8, 0, 0, 797000, tzinfo=dt.UTC)
            if status is AbsenceStatus.APPROVED
            else None,
            cancelled_at=dt.datetime(2026, 2, 22, 8, 0, tzinfo=dt.UTC)
            if status is AbsenceStatus.CANCELLED
            else None,
        ),
        employee=Employee(
            id="134",
            display_name="Luca Pacioli",
            legal_entity_id="le-1",
            email="luca@acme.example",
            employee_number="00001",
        ),
    )


def make_delivery(event: AbsenceEvent, operation: Operation = Operation.UPSERT) -> Delivery:
    now = dt.datetime.now(dt.UTC)
    return Delivery(
        delivery_id=delivery_id_for("dst-1", event.event_id, operation.value),
        destination_id="dst-1",
        tenant=event.tenant,
        absence_id=event.absence.id,
        version=event.version,
        operation=operation,
        event=event,
        due_at=now,
        created_at=now,
    )


def make_destination(url: str, **settings: Any) -> Destination:
    return Destination(id="dst-1", tenant="acme", name="hook", kind="http", settings={"url": url, **settings})


def secrets_of(**values: str) -> dict[str, SecretStr]:
    return {name: SecretStr(value) for name, value in values.items()}


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(secrets=[SECRET]) as r:
        yield r


@pytest.fixture
def legacy_receiver() -> Iterator[Receiver]:
    """A Lucca-era receiver: no signature check."""
    with Receiver() as r:
        yield r


ConnectorFactory = Callable[..., Any]


@pytest.fixture
async def make_connector() -> AsyncIterator[ConnectorFactory]:
    """Builds set-up connectors and closes them after the test."""
    opened: list[HttpConnector] = []

    async def build(
        url: str, secrets: dict[str, str] | None = None, timeout: float = 5.0, **settings: Any
    ) -> HttpConnector:
        connector = HttpConnector(
            make_destination(url, **settings),
            secrets_of(**({"signing_secrets": SECRET} if secrets is None else secrets)),
            loopback_options(timeout),
        )
        await connector.setup()
        opened.append(connector)
        return connector

    yield build
    for connector in opened:
        await connector.close()


# -- absync.v1 --------------------------------------------------------------------------------------


async def test_put_stores_full_state_and_delete_removes_it(
    receiver: Receiver, make_connector: ConnectorFactory
) -> None:
    connector = await make_connector(receiver.url + "/hook")
    event = make_event()
    upsert = make_delivery(event)

    outcome = await connector.deliver(upsert, CallRecorder())

    body = receiver.state["abs-1"]
    assert body["type"] == "absence.upserted"
    assert body["delivery_id"] == upsert.delivery_id
    assert body["change"] == "approved"
    assert body["version"] == 1
    assert body["absence"] == event.to_json()["absence"]
    assert body["employee"] == event.to_json()["employee"]
    put = receiver.requests[-1]
    assert (put.method, put.path) == ("PUT", "/hook/abs-1")
    assert put.headers["content-type"] == "application/json"
    assert put.headers["idempotency-key"] == put.headers["webhook-id"] == upsert.delivery_id
    assert put.headers["user-agent"].startswith("absync/")
    assert outcome.external_id == receiver.url + "/hook/abs-1"

    deleted = make_event(change=ChangeKind.CANCELLED, status=AbsenceStatus.CANCELLED, version=2)
    await connector.deliver(make_delivery(deleted, Operation.DELETE), CallRecorder())

    assert receiver.state == {}
    assert (receiver.requests[-1].method, receiver.requests[-1].path) == ("DELETE", "/hook/abs-1")
    assert receiver.requests[-1].json()["type"] == "absence.deleted"
    assert receiver.effects == 2


async def test_absence_id_is_escaped_in_the_url(receiver: Receiver, make_connector: ConnectorFactory) -> None:
    connector = await make_connector(receiver.url + "/hook/")
    await connector.deliver(make_delivery(make_event("a/b c?")), CallRecorder())

    assert receiver.requests[-1].path == "/hook/a%2Fb%20c%3F"
    assert list(receiver.state) == ["a/b c?"]


async def test_a_repeated_delivery_has_one_effect(
    receiver: Receiver, make_connector: ConnectorFactory
) -> None:
    connector = await make_connector(receiver.url + "/hook")
    delivery = make_delivery(make_event())

    await connector.deliver(delivery, CallRecorder())
    await connector.deliver(delivery, CallRecorder())

    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.delivery_id
    assert first.body == second.body
    assert (receiver.effects, receiver.duplicates) == (1, 1)


async def test_post_mode_sends_the_change_in_the_body(
    receiver: Receiver, make_connector: ConnectorFactory
) -> None:
    connector = await make_connector(receiver.url + "/hook", method_mode="post")

    await connector.deliver(make_delivery(make_event()), CallRecorder())
    assert [(r.method, r.path) for r in receiver.requests] == [("POST", "/hook")]
    assert receiver.state["abs-1"]["type"] == "absence.upserted"

    gone = make_event(change=ChangeKind.DELETED, version=2)
    await connector.deliver(make_delivery(gone, Operation.DELETE), CallRecorder())
    assert receiver.requests[-1].json()["type"] == "absence.deleted"
    assert receiver.requests[-1].json()["change"] == "deleted"
    assert receiver.state == {}


# -- signatures -------------------------------------------------------------------------------------


def documented_verify() -> Callable[..., bool]:
    """The receiver-side check printed in docs/http-sync.md, executed as a reader would paste it."""
    block = re.search(r"```python\n((?:(?!```).)*?def verify_webhook.*?)```", DOC.read_text(), re.S)
    assert block is not None, "docs/http-sync.md lost its verify_webhook example"
    assert inspect.getsource(verify_webhook) in block.group(1), "the doc and the receiver disagree"
    namespace: dict[str, Any] = {}
    exec(block.group(1), namespace)
    verify: Callable[..., bool] = namespace["verify_webhook"]
    return verify


async def test_parallel_deliveries_share_at_most_max_connections(
    receiver: Receiver, make_connector: ConnectorFactory
) -> None:
    """The connections are split into small pools (see POOL_CONNECTIONS): together they never open
    more than ``max_connections``, and more than one pool serves the load."""
    connector = await make_connector(receiver.url + "/hook", max_connections=6)
    receiver.set_latency(0.2)
    events = [make_event(f"abs-pool-{i}") for i in range(24)]

    await asyncio.gather(*(connector.deliver(make_delivery(e), CallRecorder()) for e in events))

    assert sorted(receiver.state) == sorted(e.absence.id for e in events)
    assert 4 < receiver.peak_connections <= 6


async def test_signature_checks_out_with_the_documented_code(
    receiver: Receiver, make_connector: ConnectorFactory
) -> None:
    connector = await make_connector(receiver.url + "/hook")
    await connector.deliver(make_delivery(make_event()), CallRecorder())
    request = receiver.requests[-1]
    assert request.outcome == "effect"  # the receiver's own verify_webhook accepted it

    for verify in (verify_webhook, documented_verify()):
        assert verify([SECRET], request.headers, request.body)
        assert not verify([SECRET], request.headers, request.body.replace(b"abs-1", b"abs-2"))
        assert not verify([OLD_SECRET], request.headers, request.body)
        stale = {**request.headers, "webhook-timestamp": str(int(request.headers["webhook-timestamp"]) - 600)}
        assert not verify([SECRET], stale, request.body)


async def test_wrong_secret_is_rejected_with_401(
    receiver: Receiver, make_connector: ConnectorFactory
) -> None:
    connector = await make_connector(receiver.url + "/hook", secrets={"signing_secrets": OLD_SECRET})

    with pytest.raises(PermanentError) as caught:
        await connector.deliver(make_delivery(make_event()), CallRecorder())

    assert caught.value.status_code == 401
    assert "signature" in caught.value.message
    assert receiver.state == {}


@pytest.mark.parametrize("separator", [", ", " ", "\n", ","], ids=["comma", "space", "newline", "bare-comma"])
async def test_rotation_signs_with_every_secret(make_connector: ConnectorFactory, separator: str) -> None:
    """During a rotation, receivers still on the old secret and those already on the new one accept.

    The console's help says "separated by commas or spaces": every separator an operator may type
    gives the same two keys."""
    with Receiver(secrets=[OLD_SECRET]) as old_side, Receiver(secrets=[SECRET]) as new_side:
        for side in (old_side, new_side):
            connector = await make_connector(
                side.url + "/hook", secrets={"signing_secrets": f"{SECRET}{separator}{OLD_SECRET}"}
            )
            await connector.deliver(make_delivery(make_event()), CallRecorder())
            assert list(side.state) == ["abs-1"]
            assert len(side.requests[-1].headers["webhook-signature"].split()) == 2


# -- lucca.legacy -----------------------------------------------------------------------------------


async def test_lucca_sends_one_call_per_half_day(
    legacy_receiver: Receiver, make_connector: ConnectorFactory
) -> None:
    connector = await make_connector(
        legacy_receiver.url + "/lucca",
        secrets={"username": "acme", "password": "s3cret-pass"},
        format="lucca.legacy",
        auth="basic",
    )

    outcome = await connector.deliver(make_delivery(make_event()), CallRecorder())

    ids = ["abs-1-20260302-AM", "abs-1-20260302-PM", "abs-1-20260303-AM", "abs-1-20260303-PM"]
    assert [r.json()["id"] for r in legacy_receiver.requests] == ids
    assert sorted(legacy_receiver.half_days) == ids
    assert outcome.details["calls"] == 4
    basic = "Basic " + base64.b64encode(b"acme:s3cret-pass").decode()
    for request in legacy_receiver.requests:
        assert (request.method, request.path) == ("POST", "/lucca")
        assert request.headers["authorization"] == basic
        assert request.headers["x-version"] == "1"
        assert request.headers["x-resource-type"] == "leave"
        assert request.headers["x-event"] == "approved"
    assert legacy_receiver.half_days["abs-1-20260302-PM"] == {
        "id": "abs-1-20260302-PM",
        "date": "2026-03-02",
        "isAm": False,
        "owner": {"id": 134, "name": "Luca Pacioli", "email": "luca@acme.example", "employeeNumber": "00001"},
        "leaveAccount": {
            "id": 1718,
            "name": "Paid leave 2026",
            "categoryId": 1,
            "categoryName": "Paid leave",
        },
        "isConfirmed": True,
        "confirmationDate": "2026-02-21T08:00:00.797",
        "isCancelled": False,
        "cancellationDate": "",
    }


async def test_lucca_calls_are_signed_when_a_secret_is_set(
    receiver: Receiver, make_connector: ConnectorFactory
) -> None:
    connector = await make_connector(receiver.url, format="lucca.legacy")  # signing_secrets = SECRET

    await connector.deliver(make_delivery(make_event()), CallRecorder())

    assert len(receiver.half_days) == 4  # each call passed the receiver's signature check
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 4


async def test_lucca_pm_start_and_am_end(legacy_receiver: Receiver, make_connector: ConnectorFactory) -> None:
    connector = await make_connector(legacy_receiver.url, secrets={}, format="lucca.legacy", x_version="2")
    event = make_event(start=(dt.date(2026, 3, 2), HalfDay.PM), end=(dt.date(2026, 3, 4), HalfDay.AM))

    await connector.deliver(make_delivery(event), CallRecorder())

    sent = [(r.json()["date"], r.json()["isAm"]) for r in legacy_receiver.requests]
    assert sent == [("2026-03-02", False), ("2026-03-03", True), ("2026-03-03", False), ("2026-03-04", True)]
    assert {r.headers["x-version"] for r in legacy_receiver.requests} == {"2"}
    assert "authorization" not in legacy_receiver.requests[0].headers


@pytest.mark.parametrize(
    ("change", "status", "operation", "x_event"),
    [
        (ChangeKind.CREATED, AbsenceStatus.PENDING, Operation.UPSERT, "created"),
        (ChangeKind.UPDATED, AbsenceStatus.PENDING, Operation.UPSERT, "created"),
        (ChangeKind.APPROVED, AbsenceStatus.APPROVED, Operation.UPSERT, "approved"),
        (ChangeKind.UPDATED, AbsenceStatus.APPROVED, Operation.UPSERT, "approved"),
        (ChangeKind.CANCELLED, AbsenceStatus.CANCELLED, Operation.DELETE, "deleted"),
        (ChangeKind.DELETED, AbsenceStatus.APPROVED, Operation.DELETE, "deleted"),
    ],
)
async def test_lucca_x_event_per_change(
    legacy_receiver: Receiver,
    make_connector: ConnectorFactory,
    change: ChangeKind,
    status: AbsenceStatus,
    operation: Operation,
    x_event: str,
) -> None:
    connector = await make_connector(legacy_receiver.url, secrets={}, format="lucca.legacy")
    day = dt.date(2026, 3, 2)
    before = make_event(start=(day, HalfDay.AM), end=(day, HalfDay.PM))
    await connector.deliver(make_delivery(before), CallRecorder())

    after = make_event(
        change=change, status=status, version=2, start=(day, HalfDay.AM), end=(day, HalfDay.PM)
    )
    await connector.deliver(make_delivery(after, operation), CallRecorder())

    latest = legacy_receiver.requests[-2:]
    assert {r.headers["x-event"] for r in latest} == {x_event}
    assert all(r.json()["isCancelled"] is (operation is Operation.DELETE) for r in latest)
    assert all(r.json()["isConfirmed"] is (status is AbsenceStatus.APPROVED) for r in latest)
    expected = set() if operation is Operation.DELETE else {"abs-1-20260302-AM", "abs-1-20260302-PM"}
    assert set(legacy_receiver.half_days) == expected


# -- outcomes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after", "error", "expected_retry_after"),
    [
        (500, None, RetryableError, None),
        (502, None, RetryableError, None),
        (503, None, RetryableError, None),
        (408, None, RetryableError, None),
        (425, None, RetryableError, None),
        (503, 7, BackpressureError, 7.0),
        (429, 30, BackpressureError, 30.0),
        (429, None, BackpressureError, None),
        (429, "Wed, 21 Oct 2015 07:28:00 GMT", BackpressureError, 0.0),  # a date in the past: no wait
        (400, None, PermanentError, None),
        (401, None, PermanentError, None),
        (404, None, PermanentError, None),
        (410, None, PermanentError, None),
        (422, None, PermanentError, None),
    ],
)
async def test_failure_classes(
    receiver: Receiver,
    make_connector: ConnectorFactory,
    status: int,
    retry_after: float | str | None,
    error: type[ConnectorError],
    expected_retry_after: float | None,
) -> None:
    connector = await make_connector(receiver.url + "/hook")
    receiver.fail_next(1, status, retry_after=retry_after)

    with pytest.raises(error) as caught:
        await connector.deliver(make_delivery(make_event()), CallRecorder())

    assert type(caught.value) is error
    assert caught.value.status_code == status
    assert f"answered {status}" in caught.value.message
    if isinstance(caught.value, BackpressureError):
        assert caught.value.retry_after == expected_retry_after
    if error is PermanentError and status != 410:
        assert "injected failure" in caught.value.message  # an excerpt of the answer helps the operator
    await connector.deliver(make_delivery(make_event()), CallRecorder())  # the next try goes through
    assert list(receiver.state) == ["abs-1"]


async def test_retry_after_as_http_date_in_the_future(
    receiver: Receiver, make_connector: ConnectorFactory
) -> None:
    connector = await make_connector(receiver.url + "/hook")
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
    receiver.throttle_next(1, email.utils.format_datetime(when, usegmt=True), status=503)

    with pytest.raises(BackpressureError) as caught:
        await connector.deliver(make_delivery(make_event()), CallRecorder())

    assert caught.value.retry_after is not None
    assert 60 < caught.value.retry_after <= 120


def test_parse_retry_after() -> None:
    now = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Wed, 25 Nov 2026 12:01:30 GMT", now) == 90.0
    assert parse_retry_after("Wed, 25 Nov 2026 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


@pytest.mark.parametrize("status", [404, 410])
async def test_delete_of_an_absent_item_is_a_success(
    receiver: Receiver, make_connector: ConnectorFactory, status: int
) -> None:
    connector = await make_connector(receiver.url + "/hook")
    receiver.fail_next(1, status)
    gone = make_event(change=ChangeKind.DELETED)

    outcome = await connector.deliver(make_delivery(gone, Operation.DELETE), CallRecorder())

    assert f"answered {status}" in outcome.summary
    # Without injection the receiver itself answers 404 for an unknown absence: also a success.
    await connector.deliver(
        make_delivery(make_event("never-sent", change=ChangeKind.DELETED), Operation.DELETE), CallRecorder()
    )
    assert receiver.requests[-1].status == 404


async def test_timeout_is_retryable_and_recorded(
    receiver: Receiver, make_connector: ConnectorFactory
) -> None:
    connector = await make_connector(receiver.url + "/hook", timeout=0.3)
    receiver.hang_next(1, seconds=5)
    recorder = CallRecorder()

    with pytest.raises(RetryableError) as caught:
        await connector.deliver(make_delivery(make_event()), recorder)

    assert type(caught.value) is RetryableError
    assert "no answer within 0.3 s" in caught.value.message
    assert recorder.calls[0].response_status is None
    assert recorder.calls[0].error == caught.value.message


async def test_a_timed_out_call_applied_late_makes_the_retry_a_duplicate(
    receiver: Receiver, make_connector: ConnectorFactory
) -> None:
    """At least once: the receiver applied the change after we gave up; the retry has no effect."""
    connector = await make_connector(receiver.url + "/hook", timeout=0.3)
    receiver.hang_next(1, seconds=0.6)
    delivery = make_delivery(make_event())

    with pytest.raises(RetryableError):
        await connector.deliver(delivery, CallRecorder())
    assert await asyncio.to_thread(receiver.wait_until, lambda r: "abs-1" in r.state, 10.0)
    await connector.deliver(delivery, CallRecorder())

    assert (receiver.effects, receiver.duplicates) == (1, 1)


async def test_slow_answers_time_out(receiver: Receiver, make_connector: ConnectorFactory) -> None:
    connector = await make_connector(receiver.url + "/hook", timeout=0.2)
    receiver.set_latency(0.5)

    with pytest.raises(RetryableError):
        await connector.deliver(make_delivery(make_event()), CallRecorder())

    receiver.set_latency(0)
    await connector.deliver(make_delivery(make_event("abs-2")), CallRecorder())
    assert "abs-2" in receiver.state


async def test_connection_refused_then_back(receiver: Receiver, make_connector: ConnectorFactory) -> None:
    connector = await make_connector(receiver.url + "/hook")
    await connector.deliver(
        make_delivery(make_event("abs-0")), CallRecorder()
    )  # a pooled keep-alive connection
    receiver.pause()

    with pytest.raises(RetryableError) as caught:
        await connector.deliver(make_delivery(make_event()), CallRecorder())
    assert "ConnectError" in caught.value.message

    receiver.resume()
    await connector.deliver(make_delivery(make_event()), CallRecorder())
    assert sorted(receiver.state) == ["abs-0", "abs-1"]


async def test_connection_closed_without_answer_is_retryable(
    receiver: Receiver, make_connector: ConnectorFactory
) -> None:
    connector = await make_connector(receiver.url + "/hook")
    receiver.close_next(1)

    with pytest.raises(RetryableError):
        await connector.deliver(make_delivery(make_event()), CallRecorder())

    assert receiver.requests[-1].outcome == "closed"
    assert receiver.state == {}


async def test_failures_can_target_one_absence(receiver: Receiver, make_connector: ConnectorFactory) -> None:
    connector = await make_connector(receiver.url + "/hook")
    receiver.fail_next(1, 503, absence_id="abs-2")

    await connector.deliver(make_delivery(make_event("abs-1")), CallRecorder())
    with pytest.raises(RetryableError):
        await connector.deliver(make_delivery(make_event("abs-2")), CallRecorder())

    assert list(receiver.state) == ["abs-1"]


async def test_lucca_stops_at_the_first_failing_half_day(
    legacy_receiver: Receiver, make_connector: ConnectorFactory
) -> None:
    connector = await make_connector(legacy_receiver.url, secrets={}, format="lucca.legacy")
    legacy_receiver.fail_next(1, 500)

    with pytest.raises(RetryableError):
        await connector.deliver(make_delivery(make_event()), CallRecorder())

    assert len(legacy_receiver.requests) == 1
    await connector.deliver(make_delivery(make_event()), CallRecorder())  # the retry sends every half-day
    assert len(legacy_receiver.half_days) == 4


# -- secrets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "secrets", "settings"),
    [
        ("basic", {"username": "hook-user-42", "password": "pa55-word-xyz"}, {}),
        ("bearer", {"token": "tok-abcdef-123456"}, {}),
        ("header", {"auth_header_value": "hdr-value-987654"}, {"auth_header_name": "X-Hook-Auth"}),
    ],
)
async def test_secrets_never_reach_the_record(
    receiver: Receiver,
    make_connector: ConnectorFactory,
    auth: str,
    secrets: dict[str, str],
    settings: dict[str, str],
) -> None:
    connector = await make_connector(
        receiver.url + "/hook", secrets={**secrets, "signing_secrets": SECRET}, auth=auth, **settings
    )
    recorder = CallRecorder()  # given no secrets: the connector alone must mask them

    await connector.deliver(make_delivery(make_event()), recorder)

    sent = receiver.requests[-1].headers
    secret_header = settings.get("auth_header_name", "Authorization").lower()
    forbidden = [SECRET, SECRET.removeprefix("whsec_"), sent[secret_header], sent["webhook-signature"]]
    forbidden += [*secrets.values()]
    recorded = json.dumps([dataclasses.asdict(c) for c in recorder.calls], default=str)
    for value in forbidden:
        assert value not in recorded
    headers = {name.lower(): value for name, value in recorder.calls[0].request_headers.items()}
    assert headers[secret_header] == MASK
    assert headers["webhook-signature"] == MASK
    assert headers["webhook-id"] == sent["webhook-id"]
    assert recorder.calls[0].response_status == 201
    assert json.loads(recorder.calls[0].request_body)["absence"]["id"] == "abs-1"


# -- test_connection and configuration --------------------------------------------------------------


async def test_connection_sends_a_signed_ping(receiver: Receiver, make_connector: ConnectorFactory) -> None:
    connector = await make_connector(receiver.url + "/hook")

    outcome = await connector.test_connection(CallRecorder())

    assert "reachable" in outcome.summary
    ping = receiver.requests[-1]
    assert (ping.method, ping.json()["type"], ping.outcome) == ("POST", "absync.ping", "no-change")
    assert receiver.state == {}

    receiver.fail_next(1, 405)
    assert "405" in (await connector.test_connection(CallRecorder())).summary
    receiver.fail_next(1, 403)
    with pytest.raises(PermanentError):
        await connector.test_connection(CallRecorder())


async def test_connection_for_lucca_is_an_options_call(
    legacy_receiver: Receiver, make_connector: ConnectorFactory
) -> None:
    connector = await make_connector(
        legacy_receiver.url, secrets={"token": "tok-abcdef-123456"}, format="lucca.legacy", auth="bearer"
    )

    await connector.test_connection(CallRecorder())

    request = legacy_receiver.requests[-1]
    assert request.method == "OPTIONS"
    assert request.headers["authorization"] == "Bearer tok-abcdef-123456"
    assert legacy_receiver.half_days == {}


@pytest.mark.parametrize(
    ("settings", "secrets", "fragment"),
    [
        ({}, {}, "'url' is required"),
        ({"url": "ftp://host/x"}, {}, "url must be"),
        ({"url": "http://[::1"}, {}, "url must be"),
        ({"url": "http://h", "format": "xml"}, {}, "format must be one of"),
        ({"url": "http://h", "method_mode": "patch"}, {}, "method_mode must be one of"),
        ({"url": "http://h", "auth": "basic"}, {"username": "u"}, "'password' is not set"),
        ({"url": "http://h", "auth": "header"}, {"auth_header_value": "v"}, "'auth_header_name' is required"),
        ({"url": "http://h"}, {"signing_secrets": "abc"}, "must start with 'whsec_'"),
        ({"url": "http://h"}, {"signing_secrets": "whsec_c2hvcnQ="}, "at least 24 bytes"),
        ({"url": "http://h", "timeout": "soon"}, {}, "timeout must be positive"),
        ({"url": "http://h", "max_connections": 0}, {}, "max_connections must be a positive integer"),
    ],
)
def test_bad_configuration(settings: dict[str, str], secrets: dict[str, str], fragment: str) -> None:
    destination = Destination(id="dst-1", tenant="acme", name="hook", kind="http", settings=settings)
    with pytest.raises(ConfigurationError, match=re.escape(fragment)):
        HttpConnector(destination, secrets_of(**secrets))


def test_registered_as_http() -> None:
    assert connector_class("http") is HttpConnector
