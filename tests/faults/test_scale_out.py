"""Scale-out: worker processes share the work through consumer groups (topics of 12 partitions).

One worker starts, then two more join while a stream of changes flows; one is stopped with SIGTERM,
another killed with SIGKILL. Meanwhile records wait in the first retry topic, due at times spread
over the rebalances. At the end the receiver holds exactly the source state, each change applied once
(repeated webhook-ids are deduplicated), and no waiting record reached the receiver before its due
time, although its partition moved from one worker to another.
"""

from __future__ import annotations

import datetime as dt
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.delivery import Delivery
from schemas.models import AbsenceEvent, AbsenceStatus, ChangeKind
from streams.kafka import group_id, make_admin
from streams.settings import Settings
from streams.topics import Topics
from tests.connectors.deliveries import make_delivery
from tests.delivery.harness import Feed, http_destination, isolated
from tests.fakes.receiver import Receiver
from tests.faults.conftest import (
    Workers,
    absence_stream,
    assert_converged,
    held,
    requests_at_least,
    until,
    versions,
    wait_idle,
    wait_state,
)
from tests.streams_helpers import produce_events

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.timeout(600)]

PARTITIONS = 12
ABSENCES = 150
WAITING = 24
WAITING_ABSENCES = 40
"""The stream flowing while records wait (smaller: the point is the waiting records)."""
"""Records put in the first retry topic, two per partition."""
FIRST_DUE_S = 30.0
"""The first waiting record is due this long after the start: after the 1 -> 3 workers rebalance."""
BOUND_S = 120.0
WAITING_BOUND_S = 60.0
"""Longest wait for the waiting records once the last is due (a bound, not an assertion)."""


@pytest.fixture
def settings(bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    with isolated(bootstrap, tmp_path, partitions=PARTITIONS) as settings:
        yield settings


def waiting_deliveries(start: dt.datetime) -> list[Delivery]:
    """One second apart, spanning the rebalances (1 -> 3 workers, SIGTERM, SIGKILL)."""
    return [
        make_delivery(
            absence_id=f"abs-waiting-{i}",
            change=ChangeKind.CREATED,
            status=AbsenceStatus.APPROVED,
            destination_id="dst-http",
        ).evolve(due_at=start + dt.timedelta(seconds=FIRST_DUE_S + i))
        for i in range(WAITING)
    ]


def delivery_members(settings: Settings) -> dict[str, set[int]]:
    """Member id -> partitions of the first retry topic it holds, from the broker's view of the group."""
    admin = make_admin(settings)
    group = group_id(settings, "delivery")
    description = admin.describe_consumer_groups([group])[group].result(30)
    retry_topic = Topics(settings).retries[0]
    return {
        member.member_id: {
            tp.partition for tp in member.assignment.topic_partitions if tp.topic == retry_topic
        }
        for member in description.members
    }


def publish_slowly(settings: Settings, events: list[AbsenceEvent], done: threading.Event) -> None:
    """The stream flows during the whole test: 20 events a second."""
    for i in range(0, len(events), 20):
        produce_events(settings, events[i : i + 20])
        time.sleep(1.0)
    done.set()


def scale_out(
    settings: Settings, receiver: Receiver, workers: Workers, absences: int, waiting: list[Delivery]
) -> dict[str, int]:
    """1 worker, then 3, then SIGTERM of one and SIGKILL of another, while ``absences`` x 4 changes
    flow and ``waiting`` records wait in the first retry topic; returns the state to converge to once
    the stream is published and the waiting records are handled."""
    http_destination(settings, receiver.url + "/hook")
    events, latest = absence_stream("abs-scale", absences)
    feed = Feed(settings)
    for i, delivery in enumerate(waiting):
        feed.delayed(delivery, stage=1, partition=i % PARTITIONS)
    feed.flush()
    published = threading.Event()
    publisher = threading.Thread(target=publish_slowly, args=(settings, events, published), daemon=True)

    workers.start("w1")
    publisher.start()
    assert receiver.wait_until(requests_at_least(len(events) // 10), timeout=BOUND_S), workers.logs()
    workers.start("w2")
    workers.start("w3")
    until(lambda: len([m for m in delivery_members(settings).values() if m]) == 3, BOUND_S, "3 members")
    assert all(dt.datetime.now(dt.UTC) < d.due_at for d in waiting), "joined too late: nothing moved"
    assert receiver.wait_until(requests_at_least(len(events) * 35 // 100), timeout=BOUND_S), workers.logs()
    assert workers.signal("w2", signal.SIGTERM) == 0, workers.logs()
    assert receiver.wait_until(requests_at_least(len(events) * 55 // 100), timeout=BOUND_S), workers.logs()
    workers.signal("w3", signal.SIGKILL)
    publisher.join(BOUND_S)
    assert published.is_set()
    return held(latest) | {d.absence_id: d.version for d in waiting}


def test_one_then_three_workers_then_sigterm_and_sigkill_each_change_applied_once(
    settings: Settings, receiver: Receiver, workers: Workers
) -> None:
    expected = scale_out(settings, receiver, workers, ABSENCES, waiting=[])
    assert wait_state(receiver, expected), workers.logs()
    wait_idle(settings)
    assert workers.alive() == ["w1"], workers.logs()
    assert_converged("S1. scale-out 1 -> 3 workers, SIGTERM, SIGKILL", receiver, expected, workers.logs())


def test_records_waiting_in_a_retry_topic_survive_the_rebalances_and_are_never_early(
    settings: Settings, receiver: Receiver, workers: Workers
) -> None:
    waiting = waiting_deliveries(dt.datetime.now(dt.UTC))
    expected = scale_out(settings, receiver, workers, WAITING_ABSENCES, waiting)
    waiting_done = receiver.wait_until(
        lambda r: {d.absence_id for d in waiting} <= set(versions(r)),
        timeout=(waiting[-1].due_at - dt.datetime.now(dt.UTC)).total_seconds() + WAITING_BOUND_S,
    )
    assert waiting_done, f"waiting records not processed after the rebalances\n{workers.logs()}"
    assert wait_state(receiver, expected), workers.logs()
    wait_idle(settings)
    first_arrival: dict[str | None, dt.datetime] = {}
    for request in list(receiver.requests):
        first_arrival.setdefault(request.absence_id, request.arrived_at)
    early = [d.absence_id for d in waiting if first_arrival[d.absence_id] < d.due_at]
    assert early == [], f"processed before their due time: {early}"
    assert_converged("S2. retry records waiting across the rebalances", receiver, expected, workers.logs())
