"""The replay lane (issue 15), end to end: real broker, delivery worker, loopback receivers.

Replayed work (a resync's deliveries, a Recover's RETRY commands) is read from
``deliveries.replay`` only while live work leaves room: live changes go out while a replay backlog
waits; the backlog drains when live is idle; a replayed change older than a live one is never sent.
Liveness only (generous timeouts, no timed assertion).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from processors.replay_failed import FailedDelivery, replay_failed
from schemas.delivery import Delivery, Status
from schemas.models import ChangeKind
from streams.settings import Settings
from streams.topics import Topics
from tests.delivery.harness import (
    Feed,
    RunningWorker,
    StatusLog,
    change,
    http_destination,
    isolated,
    wait_consumed,
)
from tests.fakes.receiver import Receiver

pytestmark = pytest.mark.kafka

LIMIT = 120.0
"""Seconds a wait may take before the test gives up (a bound, not an assertion)."""
BACKLOG = 400
"""Replayed deliveries waiting: as many as the intake bound of 8 slots (8 x 50) allows in flight."""


@pytest.fixture
def narrow_settings(bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    """8 concurrency slots: at most 8 replayed records in flight."""
    with isolated(bootstrap, tmp_path, delivery_concurrency=8) as settings:
        yield settings


def successful(log: StatusLog, deliveries: list[Delivery]) -> int:
    return sum(log.latest(d.delivery_id) is Status.SUCCESSFUL for d in deliveries)


def test_live_changes_go_out_while_a_replay_backlog_waits(narrow_settings: Settings) -> None:
    """400 replayed deliveries to a slow receiver (0.25 s an answer) are being worked on; a live
    change to another destination, and one to the replayed destination itself, are both delivered
    while the replay backlog is still far from drained: at most 8 replayed records are in flight, so
    live work never queues behind the backlog."""
    settings = narrow_settings
    statuses = StatusLog(settings)
    with Receiver() as slow, Receiver() as other:
        http_destination(settings, slow.url + "/hook", dest_id="dst-replayed")
        http_destination(settings, other.url + "/hook", dest_id="dst-other")
        slow.set_latency(0.25)
        feed = Feed(settings)
        backlog = feed.replayed(
            *(
                change(f"abs-r{i:03d}", 1, ChangeKind.APPROVED, destination_id="dst-replayed")
                for i in range(BACKLOG)
            )
        )
        live = [
            change("abs-live-other", 1, ChangeKind.APPROVED, destination_id="dst-other"),
            change("abs-live-same", 1, ChangeKind.APPROVED, destination_id="dst-replayed"),
        ]
        with RunningWorker(settings):
            assert slow.wait_until(lambda r: len(r.requests) >= 1, LIMIT), "the replay lane never started"
            feed.deliveries(*live)
            statuses.wait(lambda log: successful(log, live) == len(live), LIMIT)
            replayed_then = successful(statuses, backlog)
            requests_then = len(slow.requests)
    statuses.close()

    assert replayed_then < BACKLOG, "the replay backlog drained before the live changes went out"
    assert requests_then < BACKLOG
    assert "abs-live-other" in other.state and "abs-live-same" in slow.state


def test_a_live_change_takes_the_next_free_slot_of_a_destination_being_replayed(
    narrow_settings: Settings,
) -> None:
    """The destination's own slots, end to end: its replayed attempts hold the 4 slots it may have
    (8 in all, half for one destination) and 4 more replayed records wait for them; a live change to
    it goes out with the next slot that frees, not after the 4 waiting. Counted, not timed: replayed
    requests reaching the receiver between the live change's produce and its arrival. Answers take 1 s,
    so a slot frees every ~0.25 s; without the priority, the 4 waiting would all arrive first."""
    settings = narrow_settings
    statuses = StatusLog(settings)
    with Receiver() as slow:
        http_destination(settings, slow.url + "/hook", dest_id="dst-replayed")
        slow.set_latency(1.0)
        feed = Feed(settings)
        feed.replayed(
            *(
                change(f"abs-r{i:03d}", 1, ChangeKind.APPROVED, destination_id="dst-replayed")
                for i in range(40)
            )
        )
        live = change("abs-live", 1, ChangeKind.APPROVED, destination_id="dst-replayed")
        with RunningWorker(settings):
            assert slow.wait_until(lambda r: len(r.requests) >= 8, LIMIT), "the replay never filled its slots"
            produced_at = time.monotonic()
            feed.deliveries(live)
            statuses.wait(lambda log: log.latest(live.delivery_id) is Status.SUCCESSFUL, LIMIT)
            requests = list(slow.requests)
    statuses.close()

    arrived = next(r.arrived_monotonic for r in requests if r.absence_id == "abs-live")
    overtaking = [
        r.absence_id
        for r in requests
        if r.absence_id != "abs-live" and produced_at < r.arrived_monotonic < arrived
    ]
    assert len(overtaking) <= 2, f"replayed requests went before the live change: {overtaking}"


def test_replayed_work_is_all_done_when_live_is_idle(settings: Settings, statuses: StatusLog) -> None:
    """60 replayed deliveries, then a Recover's RETRY command (on the replay lane, as
    ``replay_failed`` writes it) of a delivery in Error: everything is delivered and the replay topic
    is consumed to its end."""
    with Receiver() as receiver:
        http_destination(settings, receiver.url + "/hook")
        feed = Feed(settings)
        failing = change("abs-failed", 1, ChangeKind.APPROVED)
        receiver.fail_next(1, status=400, absence_id="abs-failed")  # permanent: Error, no retry
        with RunningWorker(settings):
            feed.deliveries(failing)
            statuses.wait_status(failing.delivery_id, Status.ERROR, timeout=LIMIT)
            replayed = feed.replayed(*(change(f"abs-r{i:02d}", 1, ChangeKind.APPROVED) for i in range(60)))
            recovered = FailedDelivery(
                failing.delivery_id, failing.destination_id, failing.absence_id, failing.tenant
            )
            assert replay_failed(settings, [recovered], issued_by="tests") == 1
            statuses.wait(lambda log: successful(log, [*replayed, failing]) == len(replayed) + 1, LIMIT)
            wait_consumed(settings, Topics(settings).replay, timeout=LIMIT)
        assert set(receiver.state) == {d.absence_id for d in [*replayed, failing]}
        assert statuses.latest(failing.delivery_id) is Status.SUCCESSFUL
        assert any(e.trigger == "retry" for e in statuses.of(failing.delivery_id))


def test_a_replayed_change_never_overwrites_a_newer_live_one(settings: Settings, statuses: StatusLog) -> None:
    """Per key, between the lanes: live changes went out first, then older replayed ones arrive.

    - abs-newer: live version 2, replayed version 1: SUPERSEDED, never sent;
    - abs-deleted: live DELETE of version 1 written after the replayed UPSERT of version 1 (a
      destination's narrowed filters after a resync): the UPSERT is SUPERSEDED, the absence stays
      deleted at the destination;
    - abs-again: a replayed UPSERT of version 1 written after the live one (a resync of an absence
      already delivered) is sent, as any resync.
    """
    with Receiver() as receiver:
        http_destination(settings, receiver.url + "/hook")
        feed = Feed(settings)
        earlier = dt.timedelta(seconds=1)
        upsert = change("abs-deleted", 1, ChangeKind.APPROVED)
        deleted = change("abs-deleted", 1, ChangeKind.CANCELLED)
        live = [
            change("abs-newer", 1, ChangeKind.APPROVED),
            change("abs-newer", 2, ChangeKind.UPDATED),
            upsert,
            deleted,
            change("abs-again", 1, ChangeKind.APPROVED),
        ]
        with RunningWorker(settings):
            feed.deliveries(*live)
            statuses.wait(lambda log: all(log.of(d.delivery_id) for d in live), LIMIT)
            for delivery in live:
                statuses.wait_settled(delivery.delivery_id, timeout=LIMIT)
            assert set(receiver.state) == {"abs-newer", "abs-again"}
            stale = feed.replayed(
                change("abs-newer", 1, ChangeKind.APPROVED),
                upsert.evolve(delivery_id="replay-of-abs-deleted", created_at=deleted.created_at - earlier),
            )
            [again] = feed.replayed(change("abs-again", 1, ChangeKind.APPROVED))
            for delivery in stale:
                assert statuses.wait_settled(delivery.delivery_id, timeout=LIMIT).status is Status.SUPERSEDED
            assert statuses.wait_settled(again.delivery_id, timeout=LIMIT).status is Status.SUCCESSFUL
        sent = [r.absence_id for r in receiver.requests]
        assert (sent.count("abs-newer"), sent.count("abs-deleted"), sent.count("abs-again")) == (2, 2, 2)
        assert set(receiver.state) == {"abs-newer", "abs-again"}
        assert receiver.state["abs-newer"]["version"] == 2
