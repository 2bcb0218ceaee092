"""Hanging destinations delay no other (issue 12, item 3) and one attempt has a total deadline
(item 6). Real broker, real connectors and client libraries, fakes on loopback. Liveness assertions
("while Google is still hung, every other delivery completes"), never timed ones. Figures:
bench/hanging_destination.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.delivery import Delivery, Status
from schemas.destination import Destination
from schemas.models import ChangeKind
from streams.destinations import publish_destination
from streams.secrets import SecretBox
from streams.settings import Settings
from tests.connectors.deliveries import TENANT
from tests.delivery.harness import Feed, RunningWorker, StatusLog, change, http_destination, isolated
from tests.fakes.drip import DripReceiver
from tests.fakes.google import FakeGoogle
from tests.fakes.graph import FakeGraph
from tests.fakes.receiver import Receiver

pytestmark = pytest.mark.kafka

EMAIL = "jane@acme.com"
GOOGLE = ("dst-google-a", "dst-google-b")


@pytest.fixture
def hang_settings(bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    """8 slots in all; a call timeout far longer than the test, so Google's calls stay hung at the
    fake. The attempt deadline (45 s) only bounds how long a rebalance waits for the hung attempts."""
    with isolated(
        bootstrap, tmp_path, delivery_concurrency=8, connector_timeout=600.0, attempt_deadline=45.0
    ) as settings:
        yield settings


@pytest.fixture
def deadline_settings(bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    """A 1 s call timeout and a 3 s attempt deadline; a first retry long after the test."""
    with isolated(
        bootstrap, tmp_path, connector_timeout=1.0, attempt_deadline=3.0, retry_delays="1h,2h,3h,4h"
    ) as settings:
        yield settings


def publish(
    settings: Settings, dest_id: str, kind: str, config: dict[str, object], secrets: dict[str, str]
) -> None:
    box = SecretBox.from_settings(settings)
    publish_destination(
        settings,
        Destination(
            id=dest_id,
            tenant=TENANT,
            name=f"{kind} {dest_id}",
            kind=kind,
            settings=config,
            secrets={name: box.encrypt(value) for name, value in secrets.items()},
            revision=1,
        ),
    )


def to(destination_id: str, prefix: str, count: int) -> list[Delivery]:
    return [
        change(f"abs-{prefix}{i}", 1, ChangeKind.APPROVED, destination_id=destination_id, email=EMAIL)
        for i in range(count)
    ]


def test_while_two_google_destinations_hang_every_http_and_graph_delivery_completes(
    hang_settings: Settings,
) -> None:
    settings = hang_settings
    statuses = StatusLog(settings)
    with FakeGoogle() as google, FakeGraph() as graph, Receiver() as receiver:
        google.add_user(EMAIL)
        graph.add_mailbox(EMAIL)
        key_file = json.dumps(google.service_account_info())
        for dest_id in GOOGLE:
            publish(settings, dest_id, "google", google.settings(), {"service_account_json": key_file})
        publish(settings, "dst-graph", "graph", graph.settings(), {"client_secret": graph.client_secret})
        http_destination(settings, receiver.url + "/hook", dest_id="dst-http")
        google.hang()

        to_google = to(GOOGLE[0], "ga", 20) + to(GOOGLE[1], "gb", 20)
        to_graph, to_http = to("dst-graph", "o", 20), to("dst-http", "h", 20)
        live = to_graph + to_http
        worker = RunningWorker(settings).start()
        try:
            Feed(settings).deliveries(*to_google)  # Google first: it takes its slots before the others
            statuses.wait(lambda _: google.hung >= 2, timeout=120)
            Feed(settings).deliveries(*live)
            statuses.wait(
                lambda log: all(log.latest(d.delivery_id) is Status.SUCCESSFUL for d in live), timeout=240
            )
            hung_meanwhile = google.hung
        finally:
            google.release()
            worker.stop()
    statuses.close()

    assert hung_meanwhile >= 2, "Google was not hanging while the others were delivered"
    assert len(graph.mailboxes[EMAIL]) == 20
    assert {d.absence_id for d in to_http} <= set(receiver.state)


def test_a_slow_drip_receiver_holds_a_lane_only_until_the_attempt_deadline(
    deadline_settings: Settings,
) -> None:
    settings = deadline_settings
    statuses = StatusLog(settings)
    with DripReceiver() as drip, Receiver() as receiver:
        http_destination(settings, drip.url + "/hook", dest_id="dst-drip")
        http_destination(settings, receiver.url + "/hook", dest_id="dst-http")
        dripped = change("abs-drip", 1, ChangeKind.APPROVED, destination_id="dst-drip")
        then = change("abs-drip", 2, ChangeKind.UPDATED, destination_id="dst-drip")
        other = change("abs-other", 1, ChangeKind.APPROVED, destination_id="dst-http")
        with RunningWorker(settings):
            Feed(settings).deliveries(dripped, other)
            pending = statuses.wait_status(dripped.delivery_id, Status.PENDING, timeout=120)
            statuses.wait_settled(other.delivery_id, timeout=120)
            # The lane of the key is free again: the next change of the same absence is attempted.
            Feed(settings).deliveries(then)
            superseding = statuses.wait_status(then.delivery_id, Status.PENDING, timeout=120)
            connections = drip.connections
    statuses.close()

    assert pending.error is not None and "attempt deadline of 3 s" in pending.error
    assert pending.next_retry_at is not None, "the timed-out attempt did not go to the retry ladder"
    assert pending.attempt_record is not None and pending.attempt_record.error is not None
    assert statuses.latest(other.delivery_id) is Status.SUCCESSFUL
    assert superseding.error is not None and "attempt deadline" in superseding.error
    assert connections == 2
