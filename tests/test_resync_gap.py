"""The resync goes through the fan-out (issue #8): what a resync sent, the fan-out knows is held, so a
later cancellation or deletion reaches the destination, and nothing goes where nothing was held.
Real broker, fan-out, and (for the end-to-end case) the delivery worker and a loopback receiver."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from confluent_kafka import Message
from confluent_kafka.admin import NewPartitions  # type: ignore[attr-defined]

from processors.fanout import RESYNC_DESTINATION_HEADER
from processors.resync import ResyncError, ResyncRequest, run_resync
from schemas.delivery import Operation, Status, Trigger, delivery_id_for
from schemas.destination import ChangeSelection
from schemas.models import AbsenceEvent, AbsenceStatus, ChangeKind
from streams.kafka import make_admin, make_producer
from streams.settings import Settings
from streams.topics import Topics
from tests.delivery.harness import http_destination
from tests.fakes.receiver import Receiver
from tests.streams_helpers import (
    add_destination,
    encode,
    headers_of,
    make_event,
    next_change,
    produce_events,
    read_to_end,
    running_fanout,
)
from tests.test_resync import LIMIT, pipeline, replays, wait_fanned_out, wait_successful

Request = tuple[int, bytes | None, bytes | None, str | None]
"""(partition, key, value, destination id for the header) of a record written straight to ``resync``."""


def approved(absence_id: str) -> AbsenceEvent:
    return next_change(make_event(absence_id), ChangeKind.APPROVED, AbsenceStatus.APPROVED)


def absences_record(settings: Settings, event: AbsenceEvent) -> Message:
    """The record of ``event`` on ``absences`` (its partition is the one a resync request uses)."""
    return next(
        m
        for m in read_to_end(settings, Topics(settings).absences)
        if m.value() == encode(event) and m.key() == event.key.encode()
    )


def produce_requests(settings: Settings, requests: Sequence[Request]) -> None:
    """Records to ``resync``, in order, acknowledged (what a resync writes, or worse)."""
    producer = make_producer(settings)
    for partition, key, value, destination_id in requests:
        headers: list[tuple[str, str | bytes | None]] = []
        if destination_id is not None:
            headers.append((RESYNC_DESTINATION_HEADER, destination_id))
        producer.produce(Topics(settings).resync, key=key, value=value, partition=partition, headers=headers)
    assert producer.flush(30) == 0


def test_a_removal_after_a_resync_reaches_the_resynced_destination_and_only_what_it_holds(
    settings: Settings,
) -> None:
    to_cancel, to_delete, kept = approved("a-cancel"), approved("a-delete"), approved("a-kept")
    pending = make_event("a-pending")
    with Receiver() as receiver, pipeline(settings) as statuses:
        produce_events(settings, [to_cancel, to_delete, kept, pending])
        wait_fanned_out(settings)
        # Created after the absences: only the resync can give it what it should hold.
        http_destination(
            settings, receiver.url + "/hook", "dst-new", changes=ChangeSelection.APPROVED_AND_DELETIONS
        )
        result = run_resync(settings, ResyncRequest("dst-new", rate=10_000))
        assert result.completed and (result.upserts, result.deletes) == (3, 0)

        cancelled = next_change(to_cancel, ChangeKind.CANCELLED, AbsenceStatus.CANCELLED)
        deleted = next_change(to_delete, ChangeKind.DELETED, AbsenceStatus.APPROVED)
        cancelled_pending = next_change(pending, ChangeKind.CANCELLED, AbsenceStatus.CANCELLED)
        produce_events(settings, [cancelled, deleted, cancelled_pending])

        deliveries = replays(settings, "dst-new")
        assert sorted((d.absence_id, d.operation, d.trigger, d.version) for d in deliveries) == [
            ("a-cancel", Operation.DELETE, Trigger.AUTOMATIC, 3),
            ("a-cancel", Operation.UPSERT, Trigger.REPLAY, 2),
            ("a-delete", Operation.DELETE, Trigger.AUTOMATIC, 3),
            ("a-delete", Operation.UPSERT, Trigger.REPLAY, 2),
            ("a-kept", Operation.UPSERT, Trigger.REPLAY, 2),
        ]  # and nothing for the pending absence cancelled: the destination never held it
        # The latest delivery of each absence succeeds (an UPSERT still pending when its DELETE
        # arrived is superseded, never sent after it); each started PENDING, from the fan-out.
        wait_successful(statuses, [d for d in deliveries if d.version == 3 or d.absence_id == "a-kept"])
        statuses.wait(lambda log: all(log.of(d.delivery_id) for d in deliveries), LIMIT)
        assert all(statuses.of(d.delivery_id)[0].status is Status.PENDING for d in deliveries)
        assert set(receiver.state) == {"a-kept"}


def test_a_resync_request_older_than_the_fanout_state_sends_the_latest_state(settings: Settings) -> None:
    first = make_event("a-1")
    cancelled = next_change(first, ChangeKind.CANCELLED, AbsenceStatus.CANCELLED)
    with running_fanout(settings):
        produce_events(settings, [first])
        wait_fanned_out(settings)
        record = absences_record(settings, first)  # what a resync that read it early would send
        produce_events(settings, [cancelled])
        wait_fanned_out(settings)
        add_destination(settings, "dst-late")
        produce_requests(settings, [(record.partition() or 0, record.key(), record.value(), "dst-late")])

        # The request says pending (an UPSERT), the fan-out knows it is cancelled since: a DELETE.
        [delivery] = replays(settings, "dst-late")
    assert (delivery.operation, delivery.trigger) == (Operation.DELETE, Trigger.REPLAY)
    assert delivery.event.event_id == cancelled.event_id and delivery.version == 2
    assert delivery.delivery_id == delivery_id_for("dst-late", cancelled.event_id, "REPLAY:DELETE")


def test_a_bad_resync_record_goes_to_the_dead_letter_and_the_next_one_is_processed(
    settings: Settings,
) -> None:
    event = approved("a-1")
    topics = Topics(settings)
    with running_fanout(settings):
        produce_events(settings, [event])
        wait_fanned_out(settings)
        add_destination(settings, "dst-late")
        record = absences_record(settings, event)
        partition = record.partition() or 0
        produce_requests(
            settings,
            [
                (partition, b"a-1", b"not avro at all", "dst-late"),
                (partition, record.key(), record.value(), None),  # whose request? no header
                (partition, record.key(), record.value(), "dst-late"),
            ],
        )
        [delivery] = replays(settings, "dst-late")
        dead = read_to_end(settings, topics.invalid)
    assert (delivery.absence_id, delivery.operation, delivery.trigger) == (
        "a-1",
        Operation.UPSERT,
        Trigger.REPLAY,
    )
    assert delivery.event.event_id == event.event_id
    reasons = [headers_of(m) for m in dead]
    assert [(h["absync-error-kind"], h["absync-source-topic"]) for h in reasons] == [
        (b"decode", topics.resync.encode()),
        (b"invalid", topics.resync.encode()),
    ]
    assert [m.value() for m in dead] == [b"not avro at all", record.value()]


def test_a_resync_refuses_to_run_when_resync_and_absences_are_partitioned_differently(
    settings: Settings,
) -> None:
    topics = Topics(settings)
    admin = make_admin(settings)
    for future in admin.create_partitions([NewPartitions(topics.resync, settings.partitions + 1)]).values():
        future.result(30)
    add_destination(settings, "dst-late")
    with pytest.raises(ResyncError, match="must have the same count"):
        run_resync(settings, ResyncRequest("dst-late"))
    assert read_to_end(settings, topics.resync) == []
