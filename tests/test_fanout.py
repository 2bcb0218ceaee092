"""Fan-out on a real broker, with destinations written to the real destinations topic."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from schemas.delivery import Operation, Status, delivery_id_for
from schemas.destination import ChangeSelection
from schemas.models import AbsenceEvent, AbsenceStatus, ChangeKind
from streams.destinations import delete_destination
from streams.kafka import connection_config
from streams.settings import REPO_ROOT, Settings
from streams.topics import Topics
from tests.cli_helpers import cli_env
from tests.streams_helpers import (
    add_destination,
    at_least,
    deliveries_of,
    encode,
    filters,
    headers_of,
    make_event,
    next_change,
    produce_events,
    produce_raw,
    read_committed,
    read_to_end,
    running_fanout,
    statuses_of,
    watermarks,
)

Sent = set[tuple[str, str, str]]
"""(destination id, event id, operation)"""


def sent(settings: Settings) -> Sent:
    return {
        (d.destination_id, d.event.event_id, d.operation.value)
        for d in deliveries_of(read_to_end(settings, Topics(settings).deliveries))
    }


def wait_for(settings: Settings, expected: Sent) -> Sent:
    """Waits until every expected delivery is committed, then returns all deliveries so far."""
    read_committed(
        settings,
        Topics(settings).deliveries,
        lambda r: (
            expected <= {(d.destination_id, d.event.event_id, d.operation.value) for d in deliveries_of(r)}
        ),
    )
    return sent(settings)


def up(dest: str, *events: AbsenceEvent) -> Sent:
    return {(dest, e.event_id, "UPSERT") for e in events}


def down(dest: str, *events: AbsenceEvent) -> Sent:
    return {(dest, e.event_id, "DELETE") for e in events}


def test_filters_tenants_and_change_selection(settings: Settings) -> None:
    add_destination(settings, "d-all")
    add_destination(settings, "d-entity", filters=filters(legal_entities=["le-fr"]))
    add_destination(settings, "d-dept", filters=filters(departments=["dep-sales"]))
    add_destination(settings, "d-account", filters=filters(leave_accounts=["la-rtt"]))
    add_destination(settings, "d-category", filters=filters(leave_categories=["cat-sick"]))
    add_destination(settings, "d-employee", filters=filters(employees=["emp-7"]))
    add_destination(settings, "d-approved", changes=ChangeSelection.APPROVED_AND_DELETIONS)
    add_destination(settings, "d-disabled", enabled=False)
    add_destination(settings, "d-globex", tenant="globex")

    paris = make_event()  # emp-1, le-fr, dep-sales, la-paid, cat-holidays, pending
    london = make_event(
        employee_id="emp-7",
        legal_entity="le-uk",
        department="dep-tech",
        leave_account="la-rtt",
        category="cat-sick",
    )
    approved = next_change(paris, ChangeKind.APPROVED, AbsenceStatus.APPROVED)
    pending_cancelled = next_change(london, ChangeKind.CANCELLED, AbsenceStatus.CANCELLED)
    globex = make_event(tenant="globex", employee_id="emp-1")
    born_approved = make_event(change=ChangeKind.CREATED, status=AbsenceStatus.APPROVED, legal_entity="le-de")

    with running_fanout(settings):
        produce_events(settings, [paris, london, approved, pending_cancelled, globex, born_approved])
        expected = (
            up("d-all", paris, london, approved, born_approved)
            | up("d-entity", paris, approved)
            | up("d-dept", paris, approved, born_approved)
            | up("d-account", london)
            | up("d-category", london)
            | up("d-employee", london)
            | up("d-approved", approved, born_approved)
            | down("d-all", pending_cancelled)
            | down("d-account", pending_cancelled)
            | down("d-category", pending_cancelled)
            | down("d-employee", pending_cancelled)
            | up("d-globex", globex)
        )
        got = wait_for(settings, expected)

    # Exactly these: no other tenant's destination, no disabled one, no pending absence to d-approved,
    # no DELETE to a destination that never held the absence.
    assert got == expected


def test_delivery_records_and_pending_statuses(settings: Settings) -> None:
    add_destination(settings, "d-1")
    add_destination(settings, "d-2", filters=filters(departments=["dep-sales"]))
    event = make_event()
    cancelled = next_change(event, ChangeKind.CANCELLED, AbsenceStatus.CANCELLED)
    topics = Topics(settings)
    with running_fanout(settings):
        produce_events(settings, [event, cancelled])
        wait_for(settings, down("d-1", cancelled) | down("d-2", cancelled))
        records = read_to_end(settings, topics.deliveries)
        status_records = read_to_end(settings, topics.status)

    deliveries = deliveries_of(records)
    assert len(deliveries) == 4
    for msg, delivery in zip(records, deliveries, strict=True):
        operation = Operation.DELETE if delivery.event.event_id == cancelled.event_id else Operation.UPSERT
        assert delivery.operation == operation
        assert delivery.delivery_id == delivery_id_for(
            delivery.destination_id, delivery.event.event_id, operation
        )
        assert msg.key() == f"{delivery.destination_id}|{event.absence.id}".encode()
        assert (delivery.stage, delivery.attempt, delivery.trigger.value, delivery.final) == (
            0,
            0,
            "AUTOMATIC",
            False,
        )
        assert delivery.due_at <= delivery.created_at
        assert delivery.version == delivery.event.version
    statuses = statuses_of(status_records)
    assert {s.delivery_id for s in statuses} == {d.delivery_id for d in deliveries}
    assert {s.status for s in statuses} == {Status.PENDING}
    assert all(s.status_id == f"{s.delivery_id}:0" for s in statuses)
    assert all(m.key() == s.delivery_id.encode() for m, s in zip(status_records, statuses, strict=True))


def test_a_destination_that_no_longer_matches_gets_a_delete(settings: Settings) -> None:
    add_destination(settings, "d-fr", filters=filters(legal_entities=["le-fr"]))
    d_sales = add_destination(settings, "d-sales", filters=filters(departments=["dep-sales"]))
    add_destination(settings, "d-approved", changes=ChangeSelection.APPROVED_AND_DELETIONS)
    moving = make_event(change=ChangeKind.CREATED, status=AbsenceStatus.APPROVED)
    moved = next_change(moving, ChangeKind.UPDATED, AbsenceStatus.APPROVED, legal_entity_id="le-uk")
    back_to_pending = next_change(moved, ChangeKind.UPDATED, AbsenceStatus.PENDING)
    with running_fanout(settings):
        produce_events(settings, [moving, moved, back_to_pending])
        got = wait_for(settings, down("d-approved", back_to_pending))
        assert got == (
            up("d-fr", moving)
            | down("d-fr", moved)
            | up("d-sales", moving, moved, back_to_pending)
            | up("d-approved", moving, moved)
            | down("d-approved", back_to_pending)
        )
        # The filters of d-sales change: the absence it holds is swept away.
        add_destination(
            settings, "d-sales", filters=filters(departments=["dep-tech"]), revision=d_sales.revision + 1
        )
        swept = wait_for(settings, down("d-sales", back_to_pending))
    assert swept - got == down("d-sales", back_to_pending)


@pytest.mark.parametrize("backend", ["memory", "disk"])
def test_state_survives_a_restart(settings: Settings, backend: str) -> None:
    """After a restart the state is restored: a replayed event is a duplicate, an older version invalid
    (on both state backends, ABSYNC_STATE_BACKEND)."""
    settings = settings.model_copy(update={"state_backend": backend})
    add_destination(settings, "d-1")
    event = make_event(version=3)
    with running_fanout(settings, worker_id="a"):
        produce_events(settings, [event])
        wait_for(settings, up("d-1", event))
    older = replace(make_event(event.absence.id, version=2), event_id="ev-older")
    newer = next_change(event, ChangeKind.UPDATED, AbsenceStatus.PENDING)
    with running_fanout(settings, worker_id="b"):
        produce_events(settings, [event, older, newer])
        got = wait_for(settings, up("d-1", newer))
        invalid = read_committed(settings, Topics(settings).invalid, at_least(1))
    assert got == up("d-1", event, newer)
    assert [headers_of(m)["absync-error-kind"] for m in invalid] == [b"out-of-order"]
    assert invalid[0].value() == encode(older)


def test_sigkill_mid_stream_makes_no_duplicate_delivery(settings: Settings, tmp_path: Path) -> None:
    """A fan-out worker process killed with SIGKILL mid-stream (twice) and restarted: every change is
    delivered exactly once. Outputs are produced as records are handled, so a kill usually leaves an
    open transaction with records in it: the restarted worker (same transactional id) aborts it."""
    add_destination(settings, "d-1")
    events = [make_event(f"abs-{i:04d}") for i in range(2000)]
    produce_events(settings, events)
    command = [sys.executable, "-m", "absync", "run", "--only", "fanout", "--no-create-topics"]
    env = cli_env(settings, ABSYNC_WORKER_ID="w1")
    topic = Topics(settings).deliveries
    worker = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stderr=subprocess.DEVNULL)
    try:
        for seen in (300, 1000):
            read_committed(settings, topic, at_least(seen))
            worker.send_signal(signal.SIGKILL)
            worker.wait(30)
            assert offsets_in(settings, topic) < len(events), "the worker was not killed mid-stream"
            worker = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stderr=subprocess.DEVNULL)
        read_committed(settings, topic, at_least(len(events)))
        records = read_to_end(settings, topic)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0

    ids = Counter(d.delivery_id for d in deliveries_of(records))
    assert [i for i, n in ids.items() if n > 1] == []
    assert {d.event.event_id for d in deliveries_of(records)} == {e.event_id for e in events}


def offsets_in(settings: Settings, topic: str) -> int:
    """Offsets used in the topic: committed, aborted and open records plus transaction markers."""
    consumer = Consumer({**connection_config(settings), "group.id": "offsets-probe"})
    try:
        return sum(
            high - low for low, high in (watermarks(consumer, topic, p) for p in range(settings.partitions))
        )
    finally:
        consumer.close()


def test_a_disabled_destination_is_paused_and_a_deleted_one_forgotten(settings: Settings) -> None:
    """Disabled: gets nothing, keeps what it holds (its DELETE comes once it is enabled again).
    Deleted: nothing can reach it any more, so it is forgotten."""
    add_destination(settings, "d-paused")
    add_destination(settings, "d-gone")
    absence = make_event()
    updated = next_change(absence, ChangeKind.UPDATED, AbsenceStatus.PENDING)
    cancelled = next_change(updated, ChangeKind.CANCELLED, AbsenceStatus.CANCELLED)
    with running_fanout(settings):
        produce_events(settings, [absence])
        wait_for(settings, up("d-paused", absence) | up("d-gone", absence))
        add_destination(settings, "d-paused", enabled=False, revision=2)
        delete_destination(settings, "d-gone")
        sync_table(settings, "d-sync-1")
        # The update makes no delivery; a bad record after it (same key: same partition) shows it is done.
        produce_raw(
            settings,
            [
                (absence.absence.id.encode(), encode(updated), None),
                (absence.absence.id.encode(), b"mark", None),
            ],
        )
        read_committed(settings, Topics(settings).invalid, lambda r: any(m.value() == b"mark" for m in r))
        add_destination(settings, "d-paused", enabled=True, revision=3)
        sync_table(settings, "d-sync-2")
        produce_events(settings, [cancelled])
        got = wait_for(settings, down("d-paused", cancelled))
    acme = {(d, e, op) for d, e, op in got if not d.startswith("d-sync")}
    assert acme == up("d-paused", absence) | up("d-gone", absence) | down("d-paused", cancelled)


def sync_table(settings: Settings, destination_id: str) -> None:
    """Returns once the fan-out worker's destination table has read every destination written so far:
    it has then read this new one (one partition), which a delivery of another tenant's event proves."""
    add_destination(settings, destination_id, tenant="sync-tenant")
    event = make_event(tenant="sync-tenant")
    produce_events(settings, [event])
    wait_for(settings, up(destination_id, event))
