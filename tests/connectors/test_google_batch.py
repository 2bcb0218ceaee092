"""Google Calendar batch requests: the fake's batch endpoint as Google documents it, and the Google
connector's batch mode against it (concurrent deliveries share batch requests, each part acting for
its own employee; one call's failure is its own), with the real google-auth and
google-api-python-client."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from pydantic import SecretStr

from connectors.base import DeliveryOutcome
from connectors.calendar import google_event_id
from connectors.egress import NOT_ALLOWED
from connectors.exceptions import BackpressureError, ConfigurationError, PermanentError, RetryableError
from connectors.google import GoogleCalendarConnector
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
from tests.fakes.google import FakeGoogle
from tests.fakes.loopback import loopback_options

USERS = [f"user{i}@acme.com" for i in range(5)]


@pytest.fixture
def fake() -> Iterator[FakeGoogle]:
    with FakeGoogle() as google:
        for email in USERS:
            google.add_user(email)
        google.reverse_batch_answers = True  # the client matches parts by Content-ID, not position
        yield google


@pytest.fixture
async def connector(fake: FakeGoogle) -> AsyncIterator[GoogleCalendarConnector]:
    connector = GoogleCalendarConnector(
        make_destination("google", fake.settings(batch_requests=True)),
        {"service_account_json": SecretStr(json.dumps(fake.service_account_info()))},
        loopback_options(),
    )
    await connector.setup()
    yield connector
    await connector.close()


def batch_posts(fake: FakeGoogle) -> int:
    return sum(1 for r in fake.requests if r.path == "/batch/calendar/v3")


def live(fake: FakeGoogle, email: str) -> list[str]:
    return sorted(e["id"] for e in fake.calendars[email].values() if e["status"] != "cancelled")


# -- the fake, as Google documents batch requests -------------------------------------------------------
def post(fake: FakeGoogle, body: bytes, content_type: str = "multipart/mixed; boundary=b0") -> httpx.Response:
    return httpx.post(f"{fake.url}/batch/calendar/v3", content=body, headers={"Content-Type": content_type})


def part(request_line: str, content_id: str = "<c+1>", *headers: str) -> bytes:
    head = f"--b0\r\nContent-Type: application/http\r\nContent-ID: {content_id}\r\n\r\n{request_line}\r\n"
    return (head + "".join(h + "\r\n" for h in headers) + "\r\n").encode()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (part("GET /calendar/v3/calendars/primary/events HTTP/1.1") + b"--b0--", "application/json"),
        (b"--b0\r\nContent-Type: text/plain\r\n\r\nGET /calendar/v3/x HTTP/1.1\r\n\r\n--b0--", None),
        (
            part("GET https://www.googleapis.com/calendar/v3/calendars/primary/events HTTP/1.1") + b"--b0--",
            None,
        ),
        (part("GET /drive/v3/files HTTP/1.1") + b"--b0--", None),
        (part("GET /calendar/v3/calendars/primary/events") + b"--b0--", None),
    ],
)
def test_the_fake_refuses_what_google_refuses(
    fake: FakeGoogle, body: bytes, content_type: str | None
) -> None:
    answer = post(fake, body, content_type or "multipart/mixed; boundary=b0")
    assert answer.status_code == 400


def test_the_fake_answers_each_part_with_its_content_id(fake: FakeGoogle) -> None:
    fake.reverse_batch_answers = False
    body = part("GET /calendar/v3/calendars/primary/events HTTP/1.1", "<c+1>", "Authorization: Bearer nope")
    body += part("GET /calendar/v3/calendars/primary/events HTTP/1.1", "<c+2>") + b"--b0--\r\n"
    answer = post(fake, body)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("multipart/mixed; boundary=batch_")
    text = answer.text
    assert text.index("Content-ID: <response-c+1>") < text.index("Content-ID: <response-c+2>")
    assert text.count("HTTP/1.1 401 Unauthorized") == 2  # no valid token, in the part or outside


# -- the connector's batch mode ---------------------------------------------------------------------
async def test_concurrent_deliveries_share_batch_requests(
    fake: FakeGoogle, connector: GoogleCalendarConnector
) -> None:
    deliveries = [make_delivery(absence_id=f"abs-{i:02d}", email=USERS[i % 5]) for i in range(10)]
    results, recorders = await deliver_all(connector, deliveries)

    assert all(isinstance(r, DeliveryOutcome) and r.summary.startswith("created") for r in results), results
    for i, email in enumerate(USERS):
        assert live(fake, email) == sorted(google_event_id(TENANT, f"abs-{j:02d}") for j in (i, i + 5))
    # 10 inserts (one call each) in one batch request; each part acted for its own employee
    assert (batch_posts(fake), fake.batch_sizes) == (1, [10])
    assert sorted(r.path for r in fake.batched) == ["/calendar/v3/calendars/primary/events"] * 10
    for i, recorder in enumerate(recorders):
        [call] = [c for c in recorder.calls if c.url.endswith("/batch/calendar/v3")]
        assert call.response_status == 200
        assert (
            f"authorization: {MASK}" in call.request_body.lower()
            and "bearer" not in call.request_body.lower()
        )
        assert google_event_id(TENANT, f"abs-{i:02d}") in call.request_body
        others = [google_event_id(TENANT, f"abs-{j:02d}") for j in range(10) if j != i]
        assert not any(other in call.request_body for other in others)
        assert (call.response_body or "").startswith("HTTP/1.1 200")
        assert "ya29." not in json.dumps([c.__dict__ for c in recorder.calls], default=str)


async def test_one_failed_call_fails_alone_and_only_it_is_retried(
    fake: FakeGoogle, connector: GoogleCalendarConnector
) -> None:
    deliveries = [make_delivery(absence_id=f"abs-{i}", email=USERS[i]) for i in range(4)]
    fake.fail_user(USERS[1], 503)
    results, _ = await deliver_all(connector, deliveries)
    assert [i for i, r in enumerate(results) if not isinstance(r, DeliveryOutcome)] == [1]
    assert type(results[1]) is RetryableError
    assert live(fake, USERS[1]) == []

    sent_before = len(fake.batched)
    [again], _ = await deliver_all(connector, [deliveries[1]])
    assert isinstance(again, DeliveryOutcome)
    assert len(fake.batched) == sent_before + 1
    assert all(len(live(fake, email)) == 1 for email in USERS[:4])


async def test_a_rate_limited_call_is_backpressure_with_its_own_retry_after(
    fake: FakeGoogle, connector: GoogleCalendarConnector
) -> None:
    deliveries = [make_delivery(absence_id=f"abs-{i}", email=USERS[i]) for i in range(3)]
    fake.fail_user(USERS[2], 429, reason="rateLimitExceeded", retry_after=11)
    results, _ = await deliver_all(connector, deliveries)
    assert isinstance(results[0], DeliveryOutcome) and isinstance(results[1], DeliveryOutcome)
    assert isinstance(results[2], BackpressureError) and results[2].retry_after == 11
    fake.fail_user(USERS[0], 403, reason="rateLimitExceeded")
    [throttled], _ = await deliver_all(connector, [make_delivery(absence_id="abs-7", email=USERS[0])])
    assert isinstance(throttled, BackpressureError)


async def test_conflicts_and_deletes_take_their_second_round(
    fake: FakeGoogle, connector: GoogleCalendarConnector
) -> None:
    await deliver_all(connector, [make_delivery(absence_id=f"abs-{i}", email=USERS[i]) for i in range(3)])
    later = later_changes(USERS)
    sent_before = len(fake.batched)
    results, _ = await deliver_all(connector, later)
    summaries = [r.summary for r in results if isinstance(r, DeliveryOutcome)]
    assert len(summaries) == 3, results
    assert summaries[0].startswith("updated") and "removed" in summaries[1] and "already gone" in summaries[2]
    # round 1: insert (409), delete, delete (404); round 2: the update after the conflict
    assert sorted(r.method for r in fake.batched[sent_before:]) == ["DELETE", "DELETE", "POST", "PUT"]
    assert fake.batch_sizes[-2:] == [3, 1]
    assert live(fake, USERS[1]) == []


async def test_a_refused_token_is_refreshed_and_the_call_sent_again(
    fake: FakeGoogle, connector: GoogleCalendarConnector
) -> None:
    await deliver_all(connector, [make_delivery(email=USERS[0])])
    fake._tokens.clear()  # every token the fake gave is refused from now on (revoked, expired early)
    tokens_before = fake.token_requests
    results, _ = await deliver_all(
        connector,
        [
            make_delivery(absence_id="abs-2", email=USERS[0]),
            make_delivery(absence_id="abs-3", email=USERS[1]),
        ],
    )
    assert all(isinstance(r, DeliveryOutcome) for r in results), results
    assert fake.token_requests > tokens_before
    assert fake.batch_sizes[-2:] == [2, 1]  # the refused call alone went again, with a new token


async def test_an_unknown_employee_fails_alone_at_its_token(
    fake: FakeGoogle, connector: GoogleCalendarConnector
) -> None:
    deliveries = [make_delivery(absence_id="abs-0", email="nobody@acme.com"), make_delivery(email=USERS[0])]
    results, _ = await deliver_all(connector, deliveries)
    assert isinstance(results[0], PermanentError) and "no Google account for nobody@acme.com" in str(
        results[0]
    )
    assert isinstance(results[1], DeliveryOutcome)
    assert fake.batch_sizes == [1]


async def test_a_refused_batch_fails_its_calls_retryably(
    fake: FakeGoogle, connector: GoogleCalendarConnector
) -> None:
    fake.fail_batch(503)
    results, recorders = await deliver_all(
        connector, [make_delivery(email=USERS[0]), make_delivery(absence_id="abs-2", email=USERS[1])]
    )
    assert all(type(r) is RetryableError and "batch answered 503" in str(r) for r in results), results
    assert all(
        c.response_status == 503 for r in recorders for c in r.calls if c.url.endswith("/batch/calendar/v3")
    )
    [again], _ = await deliver_all(connector, [make_delivery(email=USERS[0])])
    assert isinstance(again, DeliveryOutcome)


# -- end to end, through the real broker and the delivery worker ------------------------------------------
@pytest.mark.kafka
def test_the_worker_batches_deliveries_and_retries_only_the_failed_ones(
    settings: Settings, fake: FakeGoogle
) -> None:
    destination = published_destination(
        settings,
        "dst-google-batch",
        "Google (batched)",
        "google",
        fake.settings(batch_requests=True),
        {"service_account_json": json.dumps(fake.service_account_info())},
    )
    deliveries = [
        make_delivery(absence_id=f"abs-e2e-{i}", email=USERS[i], destination_id=destination.id)
        for i in range(5)
    ]
    fake.fail_user(USERS[1], 503)  # one call fails: only its delivery is retried
    fake.fail_user(USERS[3], 403, reason="rateLimitExceeded", retry_after=2)  # throttled alone
    settled, history = run_until_settled(settings, deliveries)  # all waiting: they come together

    assert all(s.status is Status.SUCCESSFUL for s in settled), [s.error for s in settled]
    assert all(len(live(fake, email)) == 1 for email in USERS)
    assert [s.attempt for s in settled] == [1, 2, 1, 2, 1]
    throttled = next(e for e in history[3] if e.status is Status.PENDING and e.error)
    assert throttled.next_retry_at is not None
    assert (throttled.next_retry_at - throttled.occurred_at).total_seconds() >= 1.9  # its Retry-After
    # one insert per employee, twice for the two retried: 7 calls, fewer batch requests
    acted_for = [fake._tokens.get(r.headers["authorization"].removeprefix("Bearer ")) for r in fake.batched]
    assert sorted(acted_for) == sorted([*USERS, USERS[1], USERS[3]])  # each part with its own user's token
    assert sum(fake.batch_sizes) == len(fake.batched) == 7
    assert len(fake.batch_sizes) < len(fake.batched) and max(fake.batch_sizes) > 1
    assert "ya29." not in json.dumps([dataclasses.asdict(s) for s in settled], default=str)


async def test_batch_mode_keeps_the_egress_policy(fake: FakeGoogle) -> None:
    connector = GoogleCalendarConnector(  # production's egress policy: loopback refused
        make_destination("google", fake.settings(batch_requests=True)),
        {"service_account_json": SecretStr(json.dumps(fake.service_account_info()))},
    )
    refused = await deliver_once(connector, make_delivery(email=USERS[0]))
    assert isinstance(refused, ConfigurationError) and refused.message == NOT_ALLOWED
    assert fake.requests == []
