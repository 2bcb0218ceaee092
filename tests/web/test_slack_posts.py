"""A Slack daily post followed as a delivery, end to end: the Slack scheduler and the delivery worker on
the real broker, the Slack fake, the projection into a real database and the operator API over HTTP.

A post that Slack refuses (``ok: false`` at HTTP 200, a 5xx) is Pending with its attempt and Slack's
answer, re-attempted on the (shortened) retry ladder until it is Successful; an operator Retry
updates it in place; a post in Error is marked as processed. The bot token never appears.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from projections.runner import catch_up
from schemas.delivery import slack_post_absence_id, slack_post_delivery_id
from streams.kafka import make_producer
from streams.topics import Topics
from tests.connectors.test_slack import (
    CHANNEL,
    MONDAY,
    Worker,
    absence,
    add_slack_destination,
    the_week,
)
from tests.delivery.harness import RunningWorker
from tests.fakes.slack import FakeSlack
from tests.streams_helpers import at_least, produce_events, read_committed
from tests.web.conftest import Api

DAY = MONDAY.isoformat()
POST_ID = slack_post_delivery_id("dst-slack", CHANNEL, DAY)
LIMIT = 90.0


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        fake.add_channel(CHANNEL, "hr-absences")
        yield fake


def followed(api: Api, client: httpx.Client, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The post's delivery detail once ``condition`` holds (the projection caught up in between)."""
    deadline = time.monotonic() + LIMIT
    detail: dict[str, Any] = {}
    while time.monotonic() < deadline:
        catch_up(api.settings, api.engine)
        response = client.get(f"/api/v1/deliveries/{POST_ID}")
        if response.status_code == 200:
            detail = response.json()
            if condition(detail):
                return detail
        time.sleep(0.3)
    pytest.fail(f"the post's delivery never matched; last seen: {detail}")


def gap(first: dict[str, Any], second: dict[str, Any]) -> float:
    """Seconds between the starts of two attempts."""
    started = [dt.datetime.fromisoformat(a["started_at"]) for a in (first, second)]
    return (started[1] - started[0]).total_seconds()


def test_a_failed_post_is_retried_on_schedule_then_retried_and_marked_by_an_operator(
    api: Api, slack: FakeSlack
) -> None:
    slack.fail("chat.postMessage", "internal_error")  # HTTP 200, ok: false
    slack.fail("chat.postMessage", "service_unavailable", status=503)
    add_slack_destination(api.settings, slack, channel_name="#hr-absences")
    produce_events(api.settings, the_week())
    worker, delivery = Worker(api.settings), RunningWorker(api.settings).start()
    try:
        with api.client("configure") as client:
            done = followed(api, client, lambda d: d["status"] == "SUCCESSFUL")
            assert (done["absence_id"], done["destination_id"]) == (slack_post_absence_id(DAY), "dst-slack")
            assert (done["start_date"], done["operation"], done["employee_id"]) == (DAY, "UPSERT", CHANNEL)
            assert done["employee_name"] == "Slack daily post in #hr-absences"
            attempts = done["attempts"]
            assert [(a["number"], a["response_status"]) for a in attempts] == [(1, 200), (2, 503), (3, 200)]
            assert all(a["request_url"].endswith("/chat.postMessage") for a in attempts)
            # On schedule: never before the ladder's delays (1 s, then 2 s in tests).
            assert gap(attempts[0], attempts[1]) >= 1.0 and gap(attempts[1], attempts[2]) >= 2.0
            assert '"internal_error"' in attempts[0]["response_body"]
            assert attempts[0]["error"] == "Slack chat.postMessage answered 200 internal_error"
            assert attempts[2]["error"] is None
            assert '"ok": true' in attempts[2]["response_body"]
            assert "Jane Doe" in attempts[2]["request_body"]  # the message sent
            assert attempts[0]["request_headers"]["Authorization"] == "***"
            [post] = slack.messages(CHANNEL)
            assert done["external_id"] == post["ts"]  # the message's ts, shown as the created item

            # An operator Retry of a Successful post makes it again: an update, never a second post.
            assert client.post(f"/api/v1/deliveries/{POST_ID}/retry").status_code == 202
            retried = followed(api, client, lambda d: d["attempt_count"] == 4 and d["status"] == "SUCCESSFUL")
            assert retried["trigger"] == "retry"
            assert retried["attempts"][-1]["request_url"].endswith("/chat.update")

            # A late change the token can no longer make: Error at once (a permanent failure).
            slack.token = "xoxb-1111-2222-RotatedToken"
            produce_events(api.settings, [absence("Yann Tard", MONDAY)])
            failed = followed(api, client, lambda d: d["status"] == "ERROR")
            assert "check the bot token" in failed["last_error"]
            assert '"invalid_auth"' in failed["attempts"][-1]["response_body"]
            assert client.post(f"/api/v1/deliveries/{POST_ID}/mark-processed").status_code == 202
            marked = followed(api, client, lambda d: d["manual"])
            assert marked["status"] == "SUCCESSFUL" and marked["attempt_count"] == failed["attempt_count"]
            everything = client.get(f"/api/v1/deliveries/{POST_ID}").text
    finally:
        worker.stop()
        delivery.stop()
    assert slack.count("chat.postMessage") == 1 and slack.messages(CHANNEL)[0]["ts"] == post["ts"]
    assert "FakeSlackBotToken" not in everything and "RotatedToken" not in everything


def test_a_post_out_of_retries_is_in_error_and_an_operator_retry_makes_it(api: Api, slack: FakeSlack) -> None:
    slack.fail("chat.postMessage", "fatal_error", times=5)  # the first attempt and its four retries
    add_slack_destination(api.settings, slack)
    produce_events(api.settings, the_week())
    worker, delivery = Worker(api.settings), RunningWorker(api.settings).start()
    try:
        with api.client("configure") as client:
            failed = followed(api, client, lambda d: d["status"] == "ERROR")
            assert failed["attempt_count"] == 5 and failed["next_retry_at"] is None
            assert slack.channels[CHANNEL].messages == []
            assert client.post(f"/api/v1/deliveries/{POST_ID}/retry").status_code == 202
            made = followed(api, client, lambda d: d["status"] == "SUCCESSFUL")
    finally:
        worker.stop()
        delivery.stop()
    assert made["attempt_count"] == 6 and made["trigger"] == "retry"
    [post] = slack.messages(CHANNEL)
    assert post["text"].startswith("*Absent today, Monday 9 March*")


def test_a_post_still_pending_when_its_day_is_over_goes_to_error(api: Api, slack: FakeSlack) -> None:
    """The owner was down when Friday's retry was due: on Monday Friday's post is Error, never made.
    A command the scheduler cannot read is dead-lettered with its reason, and stops nothing."""
    add_slack_destination(api.settings, slack)
    friday = "2026-03-06"
    pending = {"channel": CHANNEL, "ts": None, "digest": "", "attempts": 1, "stage": 1, "status": "PENDING"}
    producer = make_producer(api.settings)
    producer.produce(
        Topics(api.settings).daily_absences,
        key=f"post|dst-slack|{friday}".encode(),
        value=json.dumps({**pending, "due": 0.0, "revision": 0}).encode(),
        partition=0,
    )
    producer.produce(Topics(api.settings).slack_commands, key=b"dst-slack|slack-post:x", value=b"\x00garbage")
    assert producer.flush(30) == 0
    worker = Worker(api.settings)
    try:
        with api.client("view") as client:
            deadline = time.monotonic() + LIMIT
            detail: dict[str, Any] = {}
            while detail.get("status") != "ERROR" and time.monotonic() < deadline:
                catch_up(api.settings, api.engine)
                response = client.get(
                    f"/api/v1/deliveries/{slack_post_delivery_id('dst-slack', CHANNEL, friday)}"
                )
                detail = response.json() if response.status_code == 200 else {}
                time.sleep(0.3)
    finally:
        worker.stop()
    assert detail["status"] == "ERROR" and detail["last_error"] == "the day ended before the post was made"
    assert (detail["start_date"], detail["attempt_count"]) == (friday, 1)
    assert all(m["metadata"]["event_payload"]["day"] != friday for m in slack.messages(CHANNEL))
    [dead] = read_committed(api.settings, Topics(api.settings).deliveries_invalid, at_least(1))
    assert dead.value() == b"\x00garbage" and b"slack-commands" in b"".join(
        v for _, v in dead.headers() or []
    )
