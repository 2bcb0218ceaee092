"""Destination health: auto-disable after ABSYNC_AUTO_DISABLE_AFTER without a success (a normal
destination write on Kafka, recorded and visible), operator alerts to Slack (the fake) and to a signed
webhook (a loopback receiver), the alert settings' write-only secrets, and /metrics for the rules.

The real broker and database; the health component's clock is moved five days ahead instead of waiting.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from absync.health.monitor import AUTO_DISABLE_ACTOR, HealthMonitor
from absync.health.notify import HealthEvent
from schemas.codec import codec_for
from schemas.delivery import Status
from schemas.destination import Destination
from streams.kafka import read_compacted
from streams.topics import Topics
from tests.deploy.test_monitoring import referenced_metrics
from tests.fakes.loopback import LoopbackServer, Request, Response
from tests.fakes.receiver import verify_webhook
from tests.fakes.slack import FakeSlack
from tests.web.conftest import Api, attempt, fact

ALERT_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
DAY = dt.timedelta(days=1)


class WebhookReceiver:
    """Takes alert webhooks on loopback; keeps each with whether its signature verified."""

    def __init__(self) -> None:
        self.received: list[tuple[bool, dict[str, str], Any]] = []
        self.status = 200
        self._lock = threading.Lock()
        self.server = LoopbackServer(self._handle)

    def _handle(self, request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self._lock:
            self.received.append(
                (verify_webhook([ALERT_SECRET], headers, request.body), headers, request.json())
            )
        return Response(self.status, {"ok": self.status == 200})


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        fake.add_channel("C0ALERTS", "absync-alerts")
        yield fake


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    receiver.server.start()
    yield receiver
    receiver.server.stop()


def create_destination(api: Api, destination_id: str = "dst-hook") -> None:
    with api.client("configure") as admin:
        answer = admin.post(
            "/api/v1/destinations",
            json={
                "id": destination_id,
                "tenant": "acme",
                "name": "Team webhook",
                "kind": "http",
                "settings": {"url": "http://127.0.0.1:9/hook"},
            },
        )
    assert answer.status_code == 201, answer.text


def set_alerts(api: Api, slack: FakeSlack, webhook: WebhookReceiver) -> None:
    with api.client("configure") as admin:
        answer = admin.put(
            "/api/v1/alerts",
            json={
                "slack_channel": "C0ALERTS",
                "slack_base_url": slack.api_url(),
                "slack_token": slack.token,
                "webhook_url": webhook.server.url + "/alerts",
                "webhook_secret": ALERT_SECRET,
            },
        )
    assert answer.status_code == 200, answer.text


def millis(at: dt.datetime) -> dt.datetime:
    """``at`` as Avro's timestamp-millis keeps it."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def failure(destination_id: str, at: dt.datetime, seq: int = 1) -> Any:
    return fact(destination_id=destination_id, status=Status.PENDING, seq=seq, at=at, attempt=attempt())


def monitor_for(api: Api, clock: list[dt.datetime]) -> HealthMonitor:
    monitor = HealthMonitor(api.settings, engine=api.engine, clock=lambda: clock[0])
    monitor.destinations.start()
    monitor.destinations.wait_ready()
    return monitor


def revisions(api: Api, destination_id: str) -> list[Destination]:
    """Every revision of the destination on the destinations topic, as any worker reads them."""
    codec, found = codec_for("Destination"), []

    def keep(msg: Any) -> None:
        if msg.key() == destination_id.encode() and msg.value() is not None:
            found.append(Destination.from_avro(codec.decode(msg.value())))

    read_compacted(api.settings, Topics(api.settings).destinations, keep, timeout=30)
    return found


def test_a_destination_failing_for_five_days_is_disabled_recorded_and_operators_are_told(
    api: Api, slack: FakeSlack, webhook: WebhookReceiver
) -> None:
    create_destination(api)
    set_alerts(api, slack, webhook)
    now = millis(dt.datetime.now(dt.UTC))
    api.seed(failure("dst-hook", now - dt.timedelta(hours=1)), failure("dst-hook", now, seq=2))
    clock = [now]
    monitor = monitor_for(api, clock)
    try:
        asyncio.run(monitor.tick())  # failing for an hour: operators are told, nothing disabled
        with api.client("configure") as admin:
            health = admin.get("/api/v1/destinations/dst-hook/health").json()
            assert health["state"] == "failing"
            assert dt.datetime.fromisoformat(health["disables_at"]) == now - dt.timedelta(hours=1) + 5 * DAY
            assert admin.get("/api/v1/destinations/dst-hook").json()["enabled"] is True

            clock[0] = now + 5 * DAY - dt.timedelta(hours=1, seconds=1)  # one second short
            asyncio.run(monitor.tick())
            assert admin.get("/api/v1/destinations/dst-hook").json()["enabled"] is True

            clock[0] = now + 5 * DAY
            asyncio.run(monitor.tick())
            asyncio.run(monitor.tick())  # a second look changes nothing: recorded and told once
            destination = admin.get("/api/v1/destinations/dst-hook").json()
            health = admin.get("/api/v1/destinations/dst-hook/health").json()
            audit = admin.get("/api/v1/destinations/dst-hook/audit").json()
    finally:
        monitor.destinations.close()

    # A normal destination write: a new revision on the topic, that every reader sees.
    written = revisions(api, "dst-hook")
    assert [(d.revision, d.enabled, d.updated_by) for d in written] == [
        (1, True, "admin"),
        (2, False, AUTO_DISABLE_ACTOR),
    ]
    assert (destination["enabled"], destination["revision"], destination["updated_by"]) == (
        False,
        2,
        AUTO_DISABLE_ACTOR,
    )
    # Recorded and visible.
    assert (health["state"], health["disabled_automatically"], health["disables_at"]) == (
        "disabled",
        True,
        None,
    )
    assert [e["event"] for e in health["events"]] == ["disabled", "failing"]
    assert all(e["notify_status"] == "sent" for e in health["events"])
    assert audit[0]["actor"] == AUTO_DISABLE_ACTOR and audit[0]["action"] == "auto-disable"
    assert audit[0]["changes"]["enabled"] == {"from": True, "to": False}
    # Told: once per event, in Slack and by a signed webhook.
    texts = [m["text"] for m in slack.messages("C0ALERTS")]
    assert len(texts) == 2 and "is failing since" in texts[0] and "disabled automatically" in texts[1]
    assert [(ok, body["type"], body["destination"]["id"]) for ok, _, body in webhook.received] == [
        (True, "destination.failing", "dst-hook"),
        (True, "destination.disabled", "dst-hook"),
    ]
    assert len({headers["webhook-id"] for _, headers, _ in webhook.received}) == 2


def test_recovery_is_told_and_an_alert_that_failed_is_sent_again_later(
    api: Api, slack: FakeSlack, webhook: WebhookReceiver
) -> None:
    create_destination(api)
    set_alerts(api, slack, webhook)
    now = millis(dt.datetime.now(dt.UTC))
    api.seed(failure("dst-hook", now - dt.timedelta(minutes=10)))
    webhook.status = 503  # the webhook is down, Slack is not
    clock = [now]
    monitor = monitor_for(api, clock)
    try:
        asyncio.run(monitor.tick())
        with api.client("configure") as admin:
            [failing] = admin.get("/api/v1/destinations/dst-hook/health").json()["events"]
            assert (failing["notify_status"], failing["notify_attempts"]) == ("pending", 1)
            assert "webhook: HTTP 503" in failing["notify_error"]
            webhook.status = 200
            asyncio.run(monitor.tick())  # before the backoff: not tried again yet
            assert len(webhook.received) == 1
            clock[0] = now + dt.timedelta(minutes=5)
            api.seed(
                fact(
                    destination_id="dst-hook",
                    status=Status.SUCCESSFUL,
                    seq=3,
                    at=now,
                    attempt=attempt(status=200),
                )
            )
            asyncio.run(monitor.tick())
            health = admin.get("/api/v1/destinations/dst-hook/health").json()
    finally:
        monitor.destinations.close()
    assert health["state"] == "healthy" and health["failing_since"] is None
    assert [(e["event"], e["notify_status"]) for e in health["events"]] == [
        ("recovered", "sent"),
        ("failing", "sent"),
    ]
    # Slack took "failing" at the first try and is not sent it again; the webhook got it on the retry.
    assert ["failing" in t for t in (m["text"] for m in slack.messages("C0ALERTS"))] == [True, False]
    assert [(ok, body["type"]) for ok, _, body in webhook.received] == [
        (True, "destination.failing"),
        (True, "destination.failing"),
        (True, "destination.recovered"),
    ]


def test_alert_secrets_are_write_only_and_bound_to_their_address(api: Api, slack: FakeSlack) -> None:
    with api.client("configure") as admin:
        saved = admin.put(
            "/api/v1/alerts",
            json={"slack_channel": "C0ALERTS", "slack_base_url": slack.api_url(), "slack_token": slack.token},
        )
        assert saved.status_code == 200, saved.text
        kept = admin.put(
            "/api/v1/alerts", json={"slack_channel": "C0OTHER", "slack_base_url": slack.api_url()}
        )
        moved = admin.put(
            "/api/v1/alerts", json={"slack_channel": "C0OTHER", "slack_base_url": "https://evil.example/api/"}
        )
        bad_secret = admin.put(
            "/api/v1/alerts", json={"webhook_url": "https://x.example", "webhook_secret": "nope"}
        )
        bad_url = admin.put("/api/v1/alerts", json={"webhook_url": "https://x.example/a\u0000b"})
        shown = admin.get("/api/v1/alerts")
    with api.client("acme-configure") as tenant_admin:
        tenant = tenant_admin.get("/api/v1/alerts")
    with api.client("view") as viewer:
        view = viewer.get("/api/v1/alerts")
    for answer in (saved, kept, shown):
        assert slack.token not in answer.text
    assert kept.json()["slack_token_set"] is True and kept.json()["slack_channel"] == "C0OTHER"
    assert moved.status_code == 422 and "slack_token" in moved.text
    assert bad_secret.status_code == 422 and "webhook_secret" in bad_secret.text
    assert bad_url.status_code == 422 and "webhook_url" in bad_url.text
    assert shown.json()["slack_token_set"] is True and shown.json()["updated_by"] == "admin"
    assert (tenant.status_code, view.status_code) == (403, 403)


def test_every_metric_the_rules_and_the_dashboard_use_is_exported(api: Api) -> None:
    """deploy/prometheus/alerts.yaml and deploy/grafana/: no name that /metrics does not give."""
    create_destination(api, "dst-1")
    api.seed(
        fact(destination_id="dst-1", status=Status.ERROR, attempt=attempt()),
        fact(destination_id="dst-2", status=Status.SUCCESSFUL, attempt=attempt()),
    )
    with api.client("view") as scraper:
        text = scraper.get("/metrics").text
    exported = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    missing = referenced_metrics() - exported
    assert not missing, f"not exported: {sorted(missing)}"
    values = {
        (s.name, json.dumps(s.labels, sort_keys=True)): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    failure_key = json.dumps({"destination": "dst-1", "outcome": "failure", "tenant": "acme"}, sort_keys=True)
    assert values[("absync_destination_attempts_total", failure_key)] == 1
    assert (
        values[
            (
                "absync_destination_failing",
                json.dumps({"destination": "dst-1", "tenant": "acme"}, sort_keys=True),
            )
        ]
        == 1
    )


def test_an_alert_cannot_mention_the_channel_or_forge_a_link() -> None:
    """Names and errors come from operators and destinations: Slack's control characters are escaped."""
    event = HealthEvent(
        id=7,
        destination_id="acme:<!channel>",
        tenant="acme",
        name="<https://evil.example|Payroll> & co",
        kind="http",
        event="failing",
        at=dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC),
        summary="is failing since 2026-11-02 09:00 UTC: answered <!here>\n:white_check_mark: recovered\r\x00",
    )
    text = event.text()
    assert "<" not in text and ">" not in text
    assert not any(ord(c) < 32 for c in text)  # one line: the answer cannot forge a line of its own
    assert "&lt;!channel&gt;" in text and "&lt;!here&gt;" in text and "&amp; co" in text
    assert event.payload()["destination"]["name"] == "<https://evil.example|Payroll> & co"  # JSON: as is


def test_the_health_component_runs_on_its_own_until_stopped(api: Api) -> None:
    """``absync run``'s ``health`` component: its own destinations table, a tick every interval."""
    create_destination(api)
    now = millis(dt.datetime.now(dt.UTC))
    api.seed(failure("dst-hook", now))
    settings = api.settings.model_copy(update={"health_interval": 1.0})
    monitor = HealthMonitor(settings, engine=api.engine, clock=lambda: now + 6 * DAY)
    loop, stop = asyncio.new_event_loop(), asyncio.Event()
    runner = threading.Thread(target=loop.run_until_complete, args=(monitor.run(stop),))
    runner.start()
    try:
        with api.client("configure") as admin:
            for _ in range(600):  # bounded: the first tick comes once the table caught up
                if admin.get("/api/v1/destinations/dst-hook").json()["enabled"] is False:
                    break
                threading.Event().wait(0.1)
            else:
                pytest.fail("the health component never disabled the destination")
    finally:
        loop.call_soon_threadsafe(stop.set)
        runner.join(30)
        loop.close()
    assert not runner.is_alive()
