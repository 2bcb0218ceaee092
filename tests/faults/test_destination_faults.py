"""Faults 3-9: the receiver or the destination's configuration misbehaves; the pipeline (fan-out and
delivery worker in threads, real broker, real HTTP receivers) goes on, and each case ends with every
destination's state compared with the source."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from schemas.delivery import DeliveryStatus, Status, Trigger
from schemas.destination import Destination, Filters
from schemas.models import AbsenceEvent
from streams.destinations import delete_destination, publish_destination
from streams.secrets import SecretBox
from streams.settings import Settings
from streams.topics import Topics
from tests.delivery.harness import SIGNING_SECRET, RunningWorker, StatusLog, http_destination
from tests.fakes.receiver import Receiver
from tests.faults.conftest import (
    SETTLE_S,
    absence_stream,
    assert_converged,
    held,
    latest_of,
    send_retry,
    wait_idle,
    wait_state,
)
from tests.streams_helpers import make_event, produce_events, produce_raw, read_to_end, running_fanout

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.timeout(300)]


@contextmanager
def pipeline(settings: Settings) -> Iterator[None]:
    """Fan-out and delivery worker; leaving raises if either failed (a crash is a failed case)."""
    with running_fanout(settings), RunningWorker(settings):
        yield


def latest_statuses(
    log: StatusLog, latest: dict[str, AbsenceEvent], destination_id: str
) -> list[DeliveryStatus]:
    """The last status event of each absence's latest change at ``destination_id`` (those seen)."""
    last: dict[str, DeliveryStatus] = {}
    for event in log.events:
        if event.destination_id == destination_id and event.version == latest[event.absence_id].version:
            last[event.absence_id] = event
    return list(last.values())


def settled_in(
    latest: dict[str, AbsenceEvent], destination_id: str, *wanted: Status
) -> Callable[[StatusLog], bool]:
    """A predicate: the latest change of every absence is at ``destination_id`` in one of ``wanted``."""

    def settled(log: StatusLog) -> bool:
        done = latest_statuses(log, latest, destination_id)
        return len(done) == len(latest) and all(s.status in wanted for s in done)

    return settled


def test_receiver_down_longer_than_all_delays_ends_in_error_then_retry_fixes_it(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    http_destination(settings, receiver.url + "/hook")
    events, latest = absence_stream("abs-down", 10)
    receiver.pause()  # connection refused for every attempt of the ladder (1s, 2s, 3s, 4s)
    with pipeline(settings):
        produce_events(settings, events)
        statuses.wait(settled_in(latest, "dst-http", Status.ERROR), timeout=SETTLE_S)
        errors = latest_statuses(statuses, latest, "dst-http")
        assert {e.attempt for e in errors} == {1 + len(settings.retry_delays)}
        assert all(e.error for e in errors)
        assert receiver.requests == []
        receiver.resume()
        send_retry(settings, errors)
        assert wait_state(receiver, held(latest)), receiver.snapshot()
        statuses.wait(settled_in(latest, "dst-http", Status.SUCCESSFUL), timeout=SETTLE_S)
        wait_idle(settings)
    retried = latest_statuses(statuses, latest, "dst-http")
    assert {s.trigger for s in retried} == {Trigger.RETRY.value.lower()}
    assert_converged("3. receiver down > all delays, then Retry", receiver, held(latest))


def test_slow_receiver_and_requests_beyond_the_timeout(settings: Settings, receiver: Receiver) -> None:
    """Every answer takes 0.5 s (timeout 2 s); three requests hang 3 s: the connector gives up, the
    receiver applies them late, and the retry of the same delivery is a repeat (same webhook-id)."""
    http_destination(settings, receiver.url + "/hook")
    events, latest = absence_stream("abs-slow", 12)
    singles = [make_event(f"abs-slow-single-{i}") for i in range(3)]
    for event in singles:
        receiver.hang_next(1, settings.connector_timeout + 1.0, absence_id=event.absence.id)
    receiver.set_latency(0.5)
    expected = held(latest | latest_of(singles))
    with pipeline(settings):
        produce_events(settings, singles + events)
        assert wait_state(receiver, expected), receiver.snapshot()
        # The held requests are applied before their retries arrive: wait for the repeats too.
        repeated = receiver.wait_until(lambda r: r.duplicates >= len(singles), timeout=SETTLE_S)
        wait_idle(settings)
    assert repeated, f"the timed-out requests were not sent again: {receiver.snapshot()}"
    assert_converged("4. receiver slow (0.5 s, 3 requests beyond the timeout)", receiver, expected)


def test_410_is_permanent_for_upserts_and_success_for_deletes(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    http_destination(settings, receiver.url + "/hook")
    events, latest = absence_stream("abs-gone", 6)
    refused = make_event("abs-gone-refused")  # its PUT answered 410: Error at once, no retry
    receiver.fail_next(1, 410, absence_id=refused.absence.id)
    # abs-gone-1: its creation and deletion both answered 410 (the receiver never held it).
    receiver.fail_next(4, 410, absence_id="abs-gone-1")
    everything = latest | latest_of([refused])
    with pipeline(settings):
        produce_events(settings, [refused, *events])
        statuses.wait(
            settled_in(everything, "dst-http", Status.SUCCESSFUL, Status.ERROR),
            timeout=SETTLE_S,
        )
        final = {s.absence_id: s for s in latest_statuses(statuses, everything, "dst-http")}
        assert final[refused.absence.id].status is Status.ERROR
        assert final[refused.absence.id].attempt == 1
        assert "gone" in (final[refused.absence.id].error or "")
        assert final["abs-gone-1"].status is Status.SUCCESSFUL  # DELETE answered 410: already gone
        wait_idle(settings)
        assert_converged("5. receiver 410 (before Retry)", receiver, held(latest))
        send_retry(settings, [final[refused.absence.id]])
        assert wait_state(receiver, held(everything)), receiver.snapshot()
        wait_idle(settings)
    assert_converged("5. receiver 410, then Retry of the upsert", receiver, held(everything))


def test_destination_deleted_while_deliveries_are_pending(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    with Receiver() as gone_receiver:
        http_destination(settings, gone_receiver.url + "/hook", dest_id="dst-gone")
        http_destination(settings, receiver.url + "/hook", dest_id="dst-kept")
        gone_receiver.pause()
        events, latest = absence_stream("abs-del", 10)
        later, later_latest = absence_stream("abs-del-later", 4)
        with pipeline(settings):
            produce_events(settings, events)
            statuses.wait(
                lambda log: any(
                    s.destination_id == "dst-gone" and s.next_retry_at is not None for s in log.events
                ),
                timeout=SETTLE_S,
            )
            delete_destination(settings, "dst-gone")
            statuses.wait(
                settled_in(latest, "dst-gone", Status.SUPERSEDED, Status.ERROR),
                timeout=SETTLE_S,
            )
            gone_receiver.resume()
            produce_events(settings, later)
            assert wait_state(receiver, held(latest | later_latest)), receiver.snapshot()
            wait_idle(settings)
        final = latest_statuses(statuses, latest, "dst-gone")
        assert any(s.status is Status.SUPERSEDED and "deleted" in (s.error or "") for s in final)
        assert not any(
            s.destination_id == "dst-gone" for s in statuses.events if s.absence_id in later_latest
        )
        assert_converged("6. destination deleted while pending (deleted one)", gone_receiver, {})
    assert_converged(
        "6. destination deleted while pending (other one)", receiver, held(latest | later_latest)
    )


def test_destination_filters_changed_mid_stream(settings: Settings, receiver: Receiver) -> None:
    destination = http_destination(settings, receiver.url + "/hook")
    sales, sales_latest = absence_stream("abs-sales", 8, department="dep-sales")
    hr, hr_latest = absence_stream("abs-hr", 8, department="dep-hr")
    first = [e for e in sales + hr if e.version <= 2]  # created and approved
    rest = [e for e in sales + hr if e.version > 2]
    with pipeline(settings):
        produce_events(settings, first)
        assert wait_state(receiver, held(latest_of(first))), receiver.snapshot()
        narrowed = dataclasses.replace(destination, filters=Filters(departments=("dep-sales",)), revision=2)
        publish_destination(settings, narrowed)
        produce_events(settings, rest)
        expected = held(sales_latest)
        assert wait_state(receiver, expected), receiver.snapshot()
        wait_idle(settings)
    swept = [
        r
        for r in receiver.requests
        if r.method == "DELETE" and r.outcome == "effect" and (r.absence_id or "").startswith("abs-hr")
    ]
    assert sorted(str(r.absence_id) for r in swept) == sorted(hr_latest), "one DELETE per hr absence"
    assert_converged("7. destination filters narrowed mid-stream", receiver, expected)


def test_poison_record_goes_to_the_dead_letter_and_the_pipeline_goes_on(
    settings: Settings, receiver: Receiver
) -> None:
    http_destination(settings, receiver.url + "/hook")
    events, latest = absence_stream("abs-poison", 10)
    poison = b"\x00\x01 not an absence event"
    with pipeline(settings):
        produce_events(settings, events[:20])
        produce_raw(settings, [(b"abs-poison-x", poison, None)])
        produce_events(settings, events[20:])
        assert wait_state(receiver, held(latest)), receiver.snapshot()
        wait_idle(settings)
    invalid = read_to_end(settings, Topics(settings).invalid)
    assert [m.value() for m in invalid] == [poison]
    assert_converged("8. poison record on absences", receiver, held(latest))


def test_invalid_secrets_end_in_error_and_leave_other_destinations_unaffected(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    box = SecretBox.from_settings(settings)
    bad_whsec = "whsec_!!not-base64!!"
    with Receiver() as unreachable:
        for dest_id, token in (
            ("dst-bad-token", b"gAAAAAB-not-a-fernet-token"),
            ("dst-bad-whsec", box.encrypt(bad_whsec)),
        ):
            publish_destination(
                settings,
                Destination(
                    id=dest_id,
                    tenant="acme",
                    name=dest_id,
                    kind="http",
                    settings={"url": unreachable.url + "/hook"},
                    secrets={"signing_secrets": token},
                    revision=1,
                ),
            )
        http_destination(settings, receiver.url + "/hook", dest_id="dst-good")
        events, latest = absence_stream("abs-secret", 6)
        with pipeline(settings):
            produce_events(settings, events)
            for dest_id in ("dst-bad-token", "dst-bad-whsec"):
                statuses.wait(settled_in(latest, dest_id, Status.ERROR), timeout=SETTLE_S)
            assert wait_state(receiver, held(latest)), receiver.snapshot()
            wait_idle(settings)
        for dest_id, words in (("dst-bad-token", "decrypt"), ("dst-bad-whsec", "signing secret")):
            errors = latest_statuses(statuses, latest, dest_id)
            assert {e.attempt for e in errors} == {1}, f"{dest_id}: a configuration error is not retried"
            for error in errors:
                assert words in (error.error or "").lower(), error.error
                assert bad_whsec not in (error.error or "") and SIGNING_SECRET not in (error.error or "")
        assert unreachable.requests == []
    assert_converged("9. invalid secrets (other destination)", receiver, held(latest))
