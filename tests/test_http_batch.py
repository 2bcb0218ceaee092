"""The http connector's absync.v1 batch mode (connectors/http_batch.py) against real receivers on
loopback: the protocol receiver of tests/fakes/receiver.py (signed, deduplicating, failing chosen
items), and raw loopback servers for hostile answers. No broker: the end-to-end retry of one failed
item through the worker is tests/delivery/test_batch_delivery.py."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.base import CallRecorder, DeliveryOutcome
from connectors.exceptions import BackpressureError, ConfigurationError, PermanentError, RetryableError
from connectors.http import HttpConnector
from connectors.http_batch import MAX_BATCH_SIZE, answer_limit, split
from connectors.registry import declaration
from schemas.delivery import Delivery
from schemas.destination import Destination
from schemas.models import AbsenceStatus, ChangeKind
from streams.logging import MASK
from tests.connectors.deliveries import make_delivery
from tests.fakes.loopback import LoopbackServer, Request, Response, loopback_options
from tests.fakes.receiver import Receiver
from tests.test_http_connector import DOC, SECRET

DEST = "dst-batch"
Results = list[BaseException | DeliveryOutcome]


def change(absence_id: str, *, deleted: bool = False, version: int = 1) -> Delivery:
    return make_delivery(
        absence_id=absence_id,
        version=version,
        destination_id=DEST,
        change=ChangeKind.CANCELLED if deleted else ChangeKind.APPROVED,
        status=AbsenceStatus.CANCELLED if deleted else AbsenceStatus.APPROVED,
    )


def changes(n: int, prefix: str = "abs") -> list[Delivery]:
    return [change(f"{prefix}-{i}") for i in range(n)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(secrets=[SECRET]) as r:
        yield r


@pytest.fixture
async def batching() -> AsyncIterator[Callable[..., Any]]:
    """Builds set-up batch-mode connectors (batch_size 10 unless told) and closes them."""
    opened: list[HttpConnector] = []

    async def build(
        url: str,
        *,
        batch_size: int = 10,
        timeout: float = 5.0,
        secrets: dict[str, str] | None = None,
        **settings: Any,
    ) -> HttpConnector:
        destination = Destination(
            id=DEST,
            tenant="acme",
            name="batch hook",
            kind="http",
            settings={"url": url, "batch_size": batch_size, **settings},
        )
        values = {"signing_secrets": SECRET, **(secrets or {})}
        connector = HttpConnector(
            destination, {k: SecretStr(v) for k, v in values.items()}, loopback_options(timeout)
        )
        await connector.setup()
        opened.append(connector)
        return connector

    yield build
    for connector in opened:
        await connector.close()


async def deliver_all(
    connector: HttpConnector, deliveries: list[Delivery]
) -> tuple[Results, list[CallRecorder]]:
    """Delivers concurrently (as the worker's lanes do); each result and each attempt's recorder."""
    recorders = [CallRecorder(connector.secrets) for _ in deliveries]
    results = await asyncio.gather(
        *(connector.deliver(d, r) for d, r in zip(deliveries, recorders, strict=True)),
        return_exceptions=True,
    )
    return list(results), recorders


def batch_requests(receiver: Receiver) -> list[dict[str, Any]]:
    return [r.json() for r in receiver.requests if r.outcome == "batch"]


async def test_concurrent_changes_go_in_fewer_signed_requests_each_with_its_own_result(
    receiver: Receiver, batching: Callable[..., Any]
) -> None:
    connector = await batching(receiver.url + "/hook", batch_size=5)
    deliveries = changes(12)
    results, recorders = await deliver_all(connector, deliveries)

    assert all(isinstance(r, DeliveryOutcome) for r in results), results
    assert sorted(receiver.state) == sorted(d.absence_id for d in deliveries)
    sent = batch_requests(receiver)
    assert 3 <= len(sent) < len(deliveries)  # signed (the receiver checks), at most 5 items each
    assert all(doc["type"] == "absync.batch" and 1 <= len(doc["items"]) <= 5 for doc in sent)
    assert all(r.path == "/hook" and r.method == "POST" for r in receiver.requests)
    # Each item is the single mode's body, and each attempt shows its own item and result.
    for delivery, recorder in zip(deliveries, recorders, strict=True):
        (call,) = recorder.calls
        item = json.loads(call.request_body)
        assert item["delivery_id"] == delivery.delivery_id and item["type"] == "absence.upserted"
        assert json.loads(call.response_body or "") == {"id": delivery.delivery_id, "status": 201}
        assert call.response_status == 200 and call.request_headers["webhook-signature"] == MASK
    assert receiver.state["abs-3"] == json.loads(recorders[3].calls[0].request_body)


async def test_one_failed_item_fails_alone_and_passes_when_sent_again(
    receiver: Receiver, batching: Callable[..., Any]
) -> None:
    connector = await batching(receiver.url + "/hook", batch_size=4)
    deliveries = changes(4)
    receiver.fail_items_next(1, 503, absence_id="abs-2", error="mailbox locked")
    results, recorders = await deliver_all(connector, deliveries)

    failed = results[2]
    assert isinstance(failed, RetryableError) and "this item answered 503: mailbox locked" in failed.message
    assert all(isinstance(r, DeliveryOutcome) for i, r in enumerate(results) if i != 2)
    assert sorted(receiver.state) == ["abs-0", "abs-1", "abs-3"]
    assert recorders[2].calls[0].response_body is not None and "503" in recorders[2].calls[0].response_body

    again = await connector.deliver(deliveries[2], CallRecorder())
    assert isinstance(again, DeliveryOutcome)
    assert "abs-2" in receiver.state
    assert [d for a, d, s in receiver.batch_items if a == "abs-2"] == [deliveries[2].delivery_id] * 2


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (429, 30, BackpressureError),
        (500, None, RetryableError),
        (408, None, RetryableError),
        (422, None, PermanentError),
        (410, None, PermanentError),
    ],
)
async def test_an_items_status_is_mapped_as_the_single_mode_maps_an_answer(
    receiver: Receiver,
    batching: Callable[..., Any],
    status: int,
    retry_after: int | None,
    expected: type[Exception],
) -> None:
    connector = await batching(receiver.url + "/hook", batch_size=2)
    receiver.fail_items_next(1, status, absence_id="abs-0", retry_after=retry_after)
    results, _ = await deliver_all(connector, changes(2))
    assert type(results[0]) is expected, results[0]
    if retry_after is not None:
        assert isinstance(results[0], BackpressureError) and results[0].retry_after == retry_after
    assert isinstance(results[1], DeliveryOutcome)


async def test_a_removal_already_gone_is_a_success(receiver: Receiver, batching: Callable[..., Any]) -> None:
    connector = await batching(receiver.url + "/hook", batch_size=2)
    receiver.fail_items_next(1, 404, absence_id="abs-gone")
    results, _ = await deliver_all(connector, [change("abs-gone", deleted=True), change("abs-kept")])
    assert all(isinstance(r, DeliveryOutcome) for r in results), results


@pytest.mark.parametrize(
    ("fail", "expected"),
    [
        ({"status": 500}, RetryableError),
        ({"status": 429, "retry_after": 7}, BackpressureError),
        ({"status": 503, "retry_after": 7}, BackpressureError),
        ({"status": 401}, PermanentError),
        ({"close": True}, RetryableError),
    ],
)
async def test_a_whole_request_failure_fails_every_item_the_same_way(
    receiver: Receiver, batching: Callable[..., Any], fail: dict[str, Any], expected: type[Exception]
) -> None:
    connector = await batching(receiver.url + "/hook", batch_size=3)
    if fail.get("close"):
        receiver.close_next(1)
    else:
        receiver.fail_next(1, fail["status"], retry_after=fail.get("retry_after"))
    results, recorders = await deliver_all(connector, changes(3))
    assert all(type(r) is expected for r in results), results
    assert not receiver.state
    assert all(len(r.calls) == 1 for r in recorders)
    if "retry_after" in fail:
        assert all(isinstance(r, BackpressureError) and r.retry_after == 7 for r in results)


async def test_a_timed_out_batch_fails_every_item_retryably(
    receiver: Receiver, batching: Callable[..., Any]
) -> None:
    connector = await batching(receiver.url + "/hook", batch_size=2, timeout=0.3)
    receiver.hang_next(1, 3.0)
    results, recorders = await deliver_all(connector, changes(2))
    assert all(isinstance(r, RetryableError) and "no answer within 0.3 s" in r.message for r in results)
    assert all(r.calls[0].error for r in recorders)


async def test_a_refused_address_is_the_uniform_configuration_error(batching: Callable[..., Any]) -> None:
    connector = await batching("http://10.0.0.1/hook", batch_size=2)  # tests allow loopback only
    results, recorders = await deliver_all(connector, changes(2))
    assert all(isinstance(r, ConfigurationError) and "address not allowed" in r.message for r in results)
    assert all(r.calls[0].error for r in recorders)


async def test_the_connection_test_sends_an_empty_batch(
    receiver: Receiver, batching: Callable[..., Any]
) -> None:
    connector = await batching(receiver.url + "/hook")
    recorder = CallRecorder()
    outcome = await connector.test_connection(recorder)
    assert "batch mode understood" in outcome.summary
    assert receiver.requests[0].json()["items"] == [] and receiver.requests[0].status == 200
    assert recorder.calls[0].request_headers["webhook-signature"] == MASK

    server = LoopbackServer(lambda request: Response(200, {"ok": True})).start()  # single mode only
    try:
        unaware = await batching(server.url + "/hook")
        with pytest.raises(PermanentError, match="support the batch mode"):
            await unaware.test_connection(CallRecorder())
    finally:
        server.stop()


async def test_secrets_echoed_by_the_receiver_never_reach_the_record(batching: Callable[..., Any]) -> None:
    token = "tok-0123456789-very-secret"

    def echo(request: Request) -> Response:  # a receiver that echoes what it got, headers included
        items = json.loads(request.body)["items"]
        echoed = f"refused, you sent {request.headers}"
        return Response(
            200, {"results": [{"id": i["delivery_id"], "status": 400, "error": echoed} for i in items]}
        )

    server = LoopbackServer(echo).start()
    try:
        connector = await batching(
            server.url + "/hook", batch_size=2, auth="bearer", secrets={"token": token}
        )
        recorders = [CallRecorder() for _ in range(2)]  # given no secrets: the connector must mask them
        results = await asyncio.gather(
            *(connector.deliver(d, r) for d, r in zip(changes(2), recorders, strict=True)),
            return_exceptions=True,
        )
    finally:
        server.stop()
    assert all(isinstance(r, PermanentError) and "400" in r.message for r in results), results
    for result, recorder in zip(results, recorders, strict=True):
        shown = repr(result) + json.dumps([c.__dict__ for c in recorder.calls], default=str)
        assert token not in shown
        assert recorder.calls[0].request_headers["authorization"] == MASK


# -- hostile answers -------------------------------------------------------------------------------


def answering(make: Callable[[list[dict[str, Any]]], Response]) -> Callable[[Request], Response]:
    """A receiver whose answer to a batch is ``make(items)``."""

    def handle(request: Request) -> Response:
        return make(json.loads(request.body)["items"])

    return handle


class Raw(Response):
    """An answer sent as the bytes given (not JSON-encoded)."""

    def encoded(self) -> bytes:
        return bytes(self.body)


def ok(item: dict[str, Any]) -> dict[str, Any]:
    return {"id": item["delivery_id"], "status": 200}


HOSTILE: dict[str, tuple[Callable[[list[dict[str, Any]]], Response], dict[int, str]]] = {
    # name: (answer, {index of an item: a fragment of its retryable error}; other items succeed)
    "missing": (
        lambda items: Response(200, {"results": [ok(i) for i in items[1:]]}),
        {0: "without a result"},
    ),
    "duplicate": (
        lambda items: Response(200, {"results": [ok(items[0]), *[ok(i) for i in items]]}),
        {0: "2 results"},
    ),
    "unknown ids ignored": (
        lambda items: Response(
            200, {"results": [{"id": "dlv_other", "status": 200}, *[ok(i) for i in items]]}
        ),
        {},
    ),
    "bad status": (
        lambda items: Response(
            200, {"results": [{"id": items[0]["delivery_id"], "status": "OK"}, *[ok(i) for i in items[1:]]]}
        ),
        {0: "no valid status"},
    ),
    "bool status": (
        lambda items: Response(
            200, {"results": [{"id": items[0]["delivery_id"], "status": True}, *[ok(i) for i in items[1:]]]}
        ),
        {0: "no valid status"},
    ),
    "not json": (lambda items: Raw(200, b"<html>ok</html>"), {0: "not JSON", 1: "not JSON", 2: "not JSON"}),
    "no results list": (
        lambda items: Response(200, {"results": "all good"}),
        {0: '"results"', 1: '"results"', 2: '"results"'},
    ),
    "a list": (
        lambda items: Response(200, [ok(i) for i in items]),
        {0: '"results"', 1: '"results"', 2: '"results"'},
    ),
    "cut": (
        lambda items: Raw(200, json.dumps({"results": [ok(i) for i in items]}).encode()[:-5]),
        {0: "not JSON", 1: "not JSON", 2: "not JSON"},
    ),
    "deep": (
        lambda items: Raw(200, b"[" * 10_000 + b"]" * 10_000),
        {0: "not JSON", 1: "not JSON", 2: "not JSON"},
    ),
    "huge": (
        lambda items: Response(200, {"results": [ok(i) for i in items], "pad": "x" * answer_limit(3)}),
        {0: "longer than", 1: "longer than", 2: "longer than"},
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_a_hostile_answer_fails_only_what_it_spoils_retryably(
    batching: Callable[..., Any], name: str
) -> None:
    make, failures = HOSTILE[name]
    server = LoopbackServer(answering(make)).start()
    try:
        connector = await batching(server.url + "/hook", batch_size=3)
        results, _ = await deliver_all(connector, changes(3))
    finally:
        server.stop()
    for i, result in enumerate(results):
        if i in failures:
            assert isinstance(result, RetryableError) and failures[i] in result.message, (i, result)
        else:
            assert isinstance(result, DeliveryOutcome), (i, result)


# -- configuration and bounds ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"batch_size": 0}, "from 1 to 100"),
        ({"batch_size": MAX_BATCH_SIZE + 1}, "from 1 to 100"),
        ({"batch_size": "10"}, "from 1 to 100"),
        ({"batch_size": 10, "format": "lucca.legacy"}, "absync.v1 only"),
    ],
)
def test_a_bad_batch_size_is_refused(settings: dict[str, Any], fragment: str) -> None:
    destination = Destination(
        id=DEST, tenant="acme", name="x", kind="http", settings={"url": "https://hr.example/hook", **settings}
    )
    with pytest.raises(ConfigurationError, match=re.escape(fragment)):
        HttpConnector(destination, {})
    if "format" not in settings:  # written through the API, YAML or the console: refused there too
        with pytest.raises(ValueError, match=re.escape(fragment)):
            declaration("http").settings.model_validate({"url": "https://hr.example/hook", **settings})


def test_a_flush_too_big_for_one_body_is_split_in_order() -> None:
    parts = [b"x" * 400] * 10
    groups = split(parts, max_bytes=1000)
    assert [list(g) for g in groups] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert [i for g in groups for i in g] == list(range(10))
    assert split([b"y" * 5000], max_bytes=1000) == [range(0, 1)]  # too big alone: sent alone


async def test_the_documented_batch_receiver_takes_a_batch(batching: Callable[..., Any]) -> None:
    """docs/http-sync.md's receiver code (signature check and batch handler), executed as the
    receiver: a valid item is stored, a refused one is that item's Error, a repeat is a no-op."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    namespace: dict[str, Any] = {}
    for block in [b for b in blocks if "def verify_webhook" in b or "def handle_batch" in b]:
        exec(compile(block, "docs/http-sync.md", "exec"), namespace)
    store: dict[str, Any] = {}
    seen: set[str] = set()

    def apply(item: dict[str, Any]) -> None:
        if item["absence"]["id"] == "abs-refused":
            raise ValueError("unknown employee")
        store[item["absence"]["id"]] = item

    def handle(request: Request) -> Response:
        status, answer = namespace["handle_batch"]([SECRET], request.headers, request.body, apply, seen)
        return Response(status, answer)

    server = LoopbackServer(handle).start()
    try:
        connector = await batching(server.url + "/hook", batch_size=3)
        deliveries = [change("abs-ok"), change("abs-refused"), change("abs-other")]
        results, _ = await deliver_all(connector, deliveries)
        again, _ = await deliver_all(connector, deliveries[:1])
    finally:
        server.stop()
    assert isinstance(results[0], DeliveryOutcome) and isinstance(results[2], DeliveryOutcome)
    assert isinstance(results[1], PermanentError) and "unknown employee" in results[1].message
    assert sorted(store) == ["abs-ok", "abs-other"] and isinstance(again[0], DeliveryOutcome)


async def test_batch_mode_off_by_default_sends_one_request_per_change(
    receiver: Receiver, batching: Callable[..., Any]
) -> None:
    connector = await batching(receiver.url + "/hook", batch_size=1)
    results, _ = await deliver_all(connector, changes(3))
    assert all(isinstance(r, DeliveryOutcome) for r in results)
    assert len(receiver.requests) == 3 and not batch_requests(receiver)
    assert all(r.method == "PUT" for r in receiver.requests)
