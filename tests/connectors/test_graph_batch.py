"""Graph JSON batching: the fake's $batch as Graph documents it, and the Graph connector's batch mode
(concurrent deliveries share $batch calls; one item's failure is its own) against it, with the real
msal and httpx."""

from __future__ import annotations

import dataclasses
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from connectors.base import DeliveryOutcome
from connectors.calendar import absence_tag
from connectors.egress import NOT_ALLOWED
from connectors.exceptions import BackpressureError, ConfigurationError, ConnectorError, RetryableError
from connectors.graph import GraphConnector
from schemas.delivery import Status
from streams.logging import MASK
from streams.settings import Settings
from tests.connectors.batch_mode import (
    deliver_all,
    deliver_once,
    later_changes,
    published_destination,
    run_until_settled,
)
from tests.connectors.deliveries import TENANT, make_delivery, make_destination
from tests.fakes.graph import FakeGraph
from tests.fakes.loopback import loopback_options

MAILBOXES = [f"user{i}@acme.com" for i in range(6)]


@pytest.fixture
def fake() -> Iterator[FakeGraph]:
    with FakeGraph() as graph:
        for email in MAILBOXES:
            graph.add_mailbox(email)
        yield graph


@pytest.fixture
async def connector(fake: FakeGraph) -> AsyncIterator[GraphConnector]:
    destination = make_destination("graph", fake.settings(batch_requests=True))
    connector = GraphConnector(
        destination, {"client_secret": SecretStr(fake.client_secret)}, loopback_options()
    )
    await connector.setup()
    yield connector
    await connector.close()


def batch_posts(fake: FakeGraph) -> int:
    return sum(1 for r in fake.requests if r.path == "/v1.0/$batch")


# -- the fake, as Graph documents $batch --------------------------------------------------------------
def post_batch(fake: FakeGraph, requests: Any, content_type: str = "application/json") -> httpx.Response:
    token = httpx.post(
        f"{fake.url}/{fake.tenant_id}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": fake.client_id,
            "client_secret": fake.client_secret,
            "scope": "https://graph.microsoft.com/.default",
        },
        verify=ssl.create_default_context(cafile=fake.ca_file),
    ).json()["access_token"]
    return httpx.post(
        f"{fake.url}/v1.0/$batch",
        content=json.dumps({"requests": requests}),
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
        verify=ssl.create_default_context(cafile=fake.ca_file),
    )


def get(i: int | str, mailbox: str = MAILBOXES[0]) -> dict[str, Any]:
    return {"id": str(i), "method": "GET", "url": f"/users/{mailbox}/events"}


@pytest.mark.parametrize(
    "requests",
    [
        [],
        [get(i, MAILBOXES[i % 6]) for i in range(21)],
        [get(1), get(1)],
        [get("a"), get("A")],
        [{"method": "GET", "url": "/users/x/events"}],
        [{**get(1), "url": "https://graph.microsoft.com/v1.0/users/x/events"}],
        [{**get(1), "method": "PATCH", "body": {"subject": "x"}}],  # a body without its Content-Type
        [{**get(1), "dependsOn": ["2"]}, get(2)],
    ],
)
def test_the_fake_refuses_what_graph_refuses(fake: FakeGraph, requests: Any) -> None:
    answer = post_batch(fake, requests)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "BadRequest"


def test_the_fake_answers_each_request_in_any_order(fake: FakeGraph) -> None:
    fake.fail_mailbox(MAILBOXES[1], 429, retry_after=9, code="ApplicationThrottled")
    answer = post_batch(
        fake,
        [get(1), get(2, MAILBOXES[1]), get(3, "nobody@acme.com"), {**get(4), "dependsOn": ["3"]}, get(5)],
    )
    assert answer.status_code == 200
    responses = answer.json()["responses"]
    assert [r["id"] for r in responses] != ["1", "2", "3", "4", "5"]
    by_id = {r["id"]: r for r in responses}
    assert by_id["1"]["status"] == 200 and by_id["1"]["body"] == {"value": []}
    assert by_id["2"]["status"] == 429 and by_id["2"]["headers"]["Retry-After"] == "9"
    assert by_id["3"]["status"] == 404 and by_id["3"]["body"]["error"]["code"] == "ErrorInvalidUser"
    assert by_id["4"]["status"] == 424
    # url without its leading slash, as the documentation's own example has it: read all the same
    assert (
        post_batch(fake, [{"id": "1", "method": "GET", "url": f"users/{MAILBOXES[0]}/events"}]).json()[
            "responses"
        ][0]["status"]
        == 200
    )


def test_the_fake_throttles_a_fifth_parallel_request_on_one_mailbox(fake: FakeGraph) -> None:
    responses = post_batch(fake, [get(i) for i in range(5)]).json()["responses"]
    assert sorted(r["status"] for r in responses) == [200, 200, 200, 200, 429]


# -- the connector's batch mode ---------------------------------------------------------------------
async def test_concurrent_deliveries_share_batch_calls(fake: FakeGraph, connector: GraphConnector) -> None:
    deliveries = [make_delivery(absence_id=f"abs-{i:02d}", email=MAILBOXES[i % 6]) for i in range(12)]
    results, recorders = await deliver_all(connector, deliveries)

    assert all(isinstance(r, DeliveryOutcome) and r.summary.startswith("created") for r in results), results
    for i, email in enumerate(MAILBOXES):
        tags = sorted(
            p["value"] for e in fake.mailboxes[email].values() for p in e["singleValueExtendedProperties"]
        )
        assert tags == sorted(absence_tag(TENANT, f"abs-{j:02d}") for j in range(i, 12, 6))
    # 12 deliveries, 2 calls each (look up, create): 24 Graph requests in 2 $batch calls, not 24 calls
    assert batch_posts(fake) == 2
    assert fake.batch_sizes == [12, 12]
    assert len(fake.batched) == 24
    # each delivery's attempt shows its own two requests and responses, none of another delivery's
    for i, recorder in enumerate(recorders):
        calls = [c for c in recorder.calls if c.url.endswith("/$batch")]
        assert [json.loads(c.request_body)["method"] for c in calls] == ["GET", "POST"]
        assert all(c.response_status == 200 and c.request_headers["authorization"] == MASK for c in calls)
        tag = absence_tag(TENANT, f"abs-{i:02d}")
        assert tag in calls[1].request_body
        assert not any(
            absence_tag(TENANT, f"abs-{j:02d}") in c.request_body for j in range(12) if j != i for c in calls
        )
        assert json.loads(calls[1].response_body or "")["status"] == 201
        assert "Bearer" not in json.dumps([c.request_headers for c in recorder.calls])
        assert fake.client_secret not in json.dumps([c.__dict__ for c in recorder.calls], default=str)


async def test_one_failed_item_fails_alone_and_only_it_is_retried(
    fake: FakeGraph, connector: GraphConnector
) -> None:
    deliveries = [make_delivery(absence_id=f"abs-{i}", email=MAILBOXES[i]) for i in range(5)]
    fake.fail_mailbox(MAILBOXES[2], 503, code="ServiceUnavailable")
    results, _ = await deliver_all(connector, deliveries)
    failed = [i for i, r in enumerate(results) if not isinstance(r, DeliveryOutcome)]
    assert failed == [2]
    assert isinstance(results[2], RetryableError) and not isinstance(results[2], BackpressureError)
    assert fake.mailboxes[MAILBOXES[2]] == {}

    sent_before = len(fake.batched)
    [again], _ = await deliver_all(connector, [deliveries[2]])
    assert isinstance(again, DeliveryOutcome)
    assert {r.path.split("/")[3] for r in fake.batched[sent_before:]} == {MAILBOXES[2]}
    assert all(len(fake.mailboxes[email]) == 1 for email in MAILBOXES[:5])


async def test_a_throttled_item_is_backpressure_with_its_own_retry_after(
    fake: FakeGraph, connector: GraphConnector
) -> None:
    deliveries = [make_delivery(absence_id=f"abs-{i}", email=MAILBOXES[i]) for i in range(3)]
    fake.fail_mailbox(MAILBOXES[1], 429, code="ApplicationThrottled", retry_after=17)
    results, _ = await deliver_all(connector, deliveries)
    assert isinstance(results[0], DeliveryOutcome) and isinstance(results[2], DeliveryOutcome)
    assert isinstance(results[1], BackpressureError) and results[1].retry_after == 17


async def test_many_deliveries_for_one_mailbox_never_exceed_its_concurrency(
    fake: FakeGraph, connector: GraphConnector
) -> None:
    deliveries = [make_delivery(absence_id=f"abs-{i}", email=MAILBOXES[0]) for i in range(6)]
    results, _ = await deliver_all(connector, deliveries)
    assert all(isinstance(r, DeliveryOutcome) for r in results), results
    assert len(fake.mailboxes[MAILBOXES[0]]) == 6
    assert sorted(fake.batch_sizes) == [2, 2, 4, 4]  # two rounds, each split 4 + 2


async def test_updates_and_deletes_go_through_the_batch_as_well(
    fake: FakeGraph, connector: GraphConnector
) -> None:
    first = [make_delivery(absence_id=f"abs-{i}", email=MAILBOXES[i]) for i in range(3)]
    await deliver_all(connector, first)
    sent_before = len(fake.batched)
    later = later_changes(MAILBOXES)
    results, _ = await deliver_all(connector, later)
    assert [type(r) for r in results] == [DeliveryOutcome] * 3
    summaries = [r.summary for r in results if isinstance(r, DeliveryOutcome)]
    assert summaries[0].startswith("updated") and "removed 1" in summaries[1] and "removed 0" in summaries[2]
    assert fake.mailboxes[MAILBOXES[1]] == {}
    assert sorted(r.method for r in fake.batched[sent_before:]) == ["DELETE", "GET", "GET", "GET", "PATCH"]
    assert batch_posts(fake) == 4  # two rounds each time: look-ups, then writes


async def test_a_refused_or_lost_batch_fails_its_items_retryably(
    fake: FakeGraph, connector: GraphConnector
) -> None:
    fake.fail_batch(503, retry_after=4)
    results, _ = await deliver_all(connector, [make_delivery(absence_id="abs-0", email=MAILBOXES[0])])
    assert isinstance(results[0], BackpressureError) and results[0].retry_after == 4
    fake.fail_batch(400)
    results, _ = await deliver_all(connector, [make_delivery(absence_id="abs-0", email=MAILBOXES[0])])
    assert type(results[0]) is RetryableError
    assert isinstance(results[0], ConnectorError) and "$batch answered 400" in results[0].message


# -- end to end, through the real broker and the delivery worker ------------------------------------------
@pytest.mark.kafka
def test_the_worker_batches_deliveries_and_retries_only_the_failed_ones(
    settings: Settings, fake: FakeGraph
) -> None:
    destination = published_destination(
        settings,
        "dst-o365-batch",
        "Office 365 (batched)",
        "graph",
        fake.settings(batch_requests=True),
        {"client_secret": fake.client_secret},
    )
    deliveries = [
        make_delivery(absence_id=f"abs-e2e-{i}", email=MAILBOXES[i], destination_id=destination.id)
        for i in range(6)
    ]
    fake.fail_mailbox(MAILBOXES[1], 503, code="ServiceUnavailable")  # one attempt fails: retried
    fake.fail_mailbox(MAILBOXES[2], 429, code="ApplicationThrottled", retry_after=2)  # throttled alone
    settled, history = run_until_settled(settings, deliveries)  # all waiting: they come together

    assert all(s.status is Status.SUCCESSFUL for s in settled), [s.error for s in settled]
    assert all(len(fake.mailboxes[email]) == 1 for email in MAILBOXES)
    # only the failed two were attempted twice; the others once
    assert [s.attempt for s in settled] == [1, 2, 2, 1, 1, 1]
    for n in (1, 2):
        [failed] = [e for e in history[n] if e.status is Status.PENDING and e.error]
        assert failed.attempt == 1 and failed.next_retry_at is not None
    throttled = next(e for e in history[2] if e.status is Status.PENDING and e.error)
    assert throttled.next_retry_at is not None
    assert (throttled.next_retry_at - throttled.occurred_at).total_seconds() >= 1.9  # its Retry-After
    # each mailbox was sent its look-up and its create once; the failed ones' look-up failed, then
    # their retry sent both: nothing of the others was sent again
    per_mailbox = {m: sum(1 for r in fake.batched if r.path.split("/")[3] == m) for m in MAILBOXES}
    assert per_mailbox == {m: (3 if i in (1, 2) else 2) for i, m in enumerate(MAILBOXES)}
    # fewer HTTP calls than Graph requests: the six first look-ups shared one call at least
    assert sum(fake.batch_sizes) == len(fake.batched) == 14
    assert len(fake.batch_sizes) < len(fake.batched) and max(fake.batch_sizes) > 1
    attempt = settled[0].attempt_record
    assert attempt is not None
    assert [c["method"] for c in attempt.calls if c["url"].endswith("/v1.0/$batch")] == ["POST", "POST"]
    assert fake.client_secret not in json.dumps(dataclasses.asdict(settled[0]), default=str)


async def test_batch_mode_keeps_the_egress_policy(fake: FakeGraph) -> None:
    destination = make_destination("graph", fake.settings(batch_requests=True))
    connector = GraphConnector(destination, {"client_secret": SecretStr(fake.client_secret)})  # production
    refused = await deliver_once(connector, make_delivery(email=MAILBOXES[0]))
    assert isinstance(refused, ConfigurationError) and refused.message == NOT_ALLOWED
    assert fake.requests == []
