"""Hostile probes of the operator alerts (docs/security.md, "Hostile-input walk"): the webhook and
Slack addresses an operator sets (loopback, private, metadata, in every spelling; a user and password
in the URL), the production egress policy at send time, a receiver that never finishes answering, and
a redirect. The real API, broker, database and sockets on loopback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from absync.health import alerts, notify
from absync.health.notify import HealthEvent, Notifier, NotifyError
from connectors.egress import NOT_ALLOWED
from streams.secrets import SecretBox
from streams.settings import Settings
from streams.topics import create_topics
from tests.conftest import delete_topics, make_settings
from tests.fakes.loopback import LOOPBACK_EGRESS, LoopbackServer, Request, Response
from tests.web.conftest import Api
from tests.web.test_health_alerts import create_destination, failure, millis, monitor_for

REFUSED_WEBHOOKS = [
    "http://127.0.0.1:8000/hook",
    "http://localhost/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://2130706433/hook",
    "http://0177.0.0.1/hook",
    "http://0x7f.1/hook",
    "http://127.1/hook",
    "http://10.0.0.8/hook",
    "http://192.168.1.1/hook",
    "http://[fd00::1]/hook",
    "http://100.64.0.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://[fd00:ec2::254]/",
]


def recording(into: list[Request]) -> Callable[[Request], Response]:
    def handle(request: Request) -> Response:
        into.append(request)
        return Response(200, {"ok": True})

    return handle


class Dripping:
    """A receiver that answers 200 with a long body, one byte every 0.2 s: it never finishes, and
    never leaves a read idle long enough for a read timeout."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/alerts"
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                while not self.stop.wait(0.2):
                    conn.sendall(b"x")
            except OSError:
                return  # the client gave up: what it should do


@pytest.fixture
def dripping() -> Iterator[Dripping]:
    receiver = Dripping()
    receiver.thread.start()
    yield receiver
    receiver.stop.set()
    receiver.thread.join(5)
    receiver.sock.close()


class ProductionSettings:
    """Production's egress policy: no allowed network, no development environment."""

    @pytest.fixture
    def settings(self, bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
        s = make_settings(bootstrap, tmp_path, allowed_networks="")
        create_topics(s)
        yield s
        delete_topics(s)


class TestUnderProductionPolicy(ProductionSettings):
    def test_refused_addresses_in_every_spelling_are_a_422(self, api: Api) -> None:
        with api.client("configure") as admin:
            for url in REFUSED_WEBHOOKS:
                refused = admin.put("/api/v1/alerts", json={"webhook_url": url})
                assert refused.status_code == 422, (url, refused.text)
                assert NOT_ALLOWED in refused.json()["detail"][0]["msg"], url
            slack = admin.put(
                "/api/v1/alerts",
                json={
                    "slack_channel": "C1",
                    "slack_base_url": "http://[::1]:9/api/",
                    "slack_token": "xoxb-1",
                },
            )
            assert slack.status_code == 422 and "slack_base_url" in slack.text
            userinfo = admin.put(
                "/api/v1/alerts", json={"webhook_url": "https://ops:hunter2@hooks.example.com/"}
            )
            assert userinfo.status_code == 422 and "user or password" in userinfo.text
            assert "hunter2" not in userinfo.text
            # A name is not resolved when written (it is checked, pinned, at every send).
            taken = admin.put("/api/v1/alerts", json={"webhook_url": "https://hooks.example.com/absync"})
            assert taken.status_code == 200, taken.text
            assert admin.get("/api/v1/alerts").json()["webhook_url"] == "https://hooks.example.com/absync"

    def test_an_alert_is_never_sent_to_loopback_in_production(self, api: Api) -> None:
        received: list[Request] = []
        receiver = LoopbackServer(recording(received))
        receiver.start()
        try:
            # A name resolving to loopback, stored as an older version would have let it be.
            alerts.save(
                api.engine,
                SecretBox.from_settings(api.settings),
                actor="probe",
                slack_channel=None,
                slack_base_url=None,
                slack_token=None,
                webhook_url=receiver.url.replace("127.0.0.1", "localhost") + "/alerts",  # DNS, /etc/hosts
                webhook_secret=None,
                egress=LOOPBACK_EGRESS,
            )
            create_destination(api, "dst-prod")
            now = millis(dt.datetime.now(dt.UTC))
            api.seed(failure("dst-prod", now))
            monitor = monitor_for(api, [now])
            try:
                asyncio.run(monitor.tick())
            finally:
                monitor.destinations.close()
        finally:
            receiver.stop()
        with api.client("configure") as admin:
            [event] = admin.get("/api/v1/destinations/dst-prod/health").json()["events"]
        assert event["notify_status"] == "pending" and NOT_ALLOWED in event["notify_error"]
        assert received == []


def test_a_receiver_that_never_finishes_answering_holds_one_send_not_the_round(
    api: Api, dripping: Dripping, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify, "TIMEOUT", 1.0)  # the total deadline of one send (10 s in service)
    with api.client("configure") as admin:
        saved = admin.put("/api/v1/alerts", json={"webhook_url": dripping.url})
        assert saved.status_code == 200, saved.text
    now = millis(dt.datetime.now(dt.UTC))
    for name in ("dst-a", "dst-b", "dst-c"):
        create_destination(api, name)
        api.seed(failure(name, now))
    monitor = monitor_for(api, [now])
    try:
        asyncio.run(monitor.tick())  # ends while the receiver is still dripping
    finally:
        monitor.destinations.close()
    assert not dripping.stop.is_set() and dripping.connections == 1
    with api.client("configure") as admin:
        events = [
            admin.get(f"/api/v1/destinations/{name}/health").json()["events"][0]
            for name in ("dst-a", "dst-b", "dst-c")
        ]
    # The first send was given up on at its deadline; the webhook was not tried again this round:
    # the other events wait, untried and uncounted, for the next round.
    first, *others = sorted(events, key=lambda e: e["id"])
    assert (first["notify_status"], first["notify_attempts"]) == ("pending", 1)
    assert "webhook: no answer within 1 s" in first["notify_error"]
    assert [(e["notify_status"], e["notify_attempts"], e["notify_error"]) for e in others] == [
        ("pending", 0, None)
    ] * 2


def test_a_redirect_is_not_followed() -> None:
    elsewhere: list[Request] = []
    target = LoopbackServer(recording(elsewhere))
    target.start()
    redirect = LoopbackServer(lambda _: Response(302, None, {"Location": target.url + "/metadata"}))
    redirect.start()
    event = HealthEvent(1, "dst-x", "acme", "x", "http", "failing", dt.datetime.now(dt.UTC), "failing")
    notifier = Notifier(alerts.AlertSettings(webhook_url=redirect.url + "/hook"), LOOPBACK_EGRESS)
    try:
        with pytest.raises(NotifyError, match="webhook: HTTP 302"):
            asyncio.run(notifier.send("webhook", event))
    finally:
        redirect.stop()
        target.stop()
    assert elsewhere == []
