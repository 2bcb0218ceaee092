"""Bulk resync and replay of failed deliveries, end to end: real broker, fan-out, delivery worker,
loopback receivers, and the projection for replay-failed. A resync's deliveries come from the
fan-out (it decides on the resync's requests), so every resync here runs with a fan-out."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from absync.commands.replay_failed import failed_since
from processors.replay_failed import replay_failed
from processors.resync import ResyncError, ResyncProgress, ResyncRequest, run_resync
from processors.resync_checkpoint import Checkpoint
from processors.resync_filter import AbsenceScope
from projections.runner import catch_up
from schemas.delivery import Delivery, Status, Trigger
from schemas.models import AbsenceEvent, AbsenceStatus, ChangeKind
from streams.kafka import connection_config, group_id
from streams.settings import REPO_ROOT, Settings
from streams.topics import Topics, create_topics
from tests.cli_helpers import absync, cli_env
from tests.conftest import delete_topics, make_settings
from tests.delivery.harness import RunningWorker, StatusLog, http_destination
from tests.fakes.receiver import Receiver
from tests.streams_helpers import (
    deliveries_of,
    make_event,
    next_change,
    produce_events,
    produce_raw,
    read_to_end,
    running_fanout,
    watermarks,
)
from tests.web import conftest as web
from tests.web.conftest import Api

api, engine = web.api, web.engine  # the API test's fixtures (a running server, its database)

LIMIT = 90.0
"""Seconds a wait may take before the test gives up (a bound, not an assertion)."""


def history(i: int) -> list[AbsenceEvent]:
    """The changes of absence ``i``: its latest state is pending, approved, cancelled, deleted or
    approved after an update (by i % 5); employees alternate between two legal entities."""
    first = make_event(f"abs-{i:03d}", legal_entity="le-de" if i % 2 == 0 else "le-fr")
    kind = i % 5
    if kind == 0:
        return [first]
    if kind == 1:
        return [first, next_change(first, ChangeKind.APPROVED, AbsenceStatus.APPROVED)]
    if kind == 2:
        approved = next_change(first, ChangeKind.APPROVED, AbsenceStatus.APPROVED)
        return [first, approved, next_change(approved, ChangeKind.CANCELLED, AbsenceStatus.CANCELLED)]
    if kind == 3:
        return [first, next_change(first, ChangeKind.DELETED, AbsenceStatus.PENDING)]
    updated = next_change(first, ChangeKind.UPDATED, AbsenceStatus.PENDING)
    return [first, updated, next_change(updated, ChangeKind.APPROVED, AbsenceStatus.APPROVED)]


def held(indexes: range, entity: str | None = None) -> set[str]:
    """Absence ids an ALL-changes destination should hold: latest state not cancelled nor deleted."""
    return {
        f"abs-{i:03d}"
        for i in indexes
        if i % 5 in (0, 1, 4) and (entity is None or (entity == "le-de") == (i % 2 == 0))
    }


def publish(settings: Settings, indexes: range) -> None:
    produce_events(settings, [event for i in indexes for event in history(i)])


def wait_fanned_out(settings: Settings) -> None:
    """Waits until the fan-out has committed every record of ``absences`` and ``resync`` (its
    outputs commit with its offsets: they are all readable then)."""
    topics = Topics(settings)
    consumer = Consumer({**connection_config(settings), "group.id": "tests-reader"})
    group = Consumer({**connection_config(settings), "group.id": group_id(settings, "fanout")})
    try:
        ends = {
            (topic, p): watermarks(consumer, topic, p)[1]
            for topic in (topics.absences, topics.resync)
            for p in consumer.list_topics(topic, timeout=30).topics[topic].partitions
        }
        written = [TopicPartition(topic, p) for (topic, p), end in ends.items() if end > 0]
        deadline = time.monotonic() + LIMIT
        while True:
            committed = group.committed(written, timeout=30)
            if all(tp.offset >= ends[(tp.topic, tp.partition)] for tp in committed):
                return
            assert time.monotonic() < deadline, "the fan-out did not consume absences and resync in time"
            time.sleep(0.2)
    finally:
        group.close()
        consumer.close()


def replays(settings: Settings, destination_id: str) -> list[Delivery]:
    """The deliveries of ``destination_id`` on the deliveries topic and the replay lane (where a
    resync's go) once the fan-out has handled every resync request (all REPLAY in these tests)."""
    wait_fanned_out(settings)
    topics = Topics(settings)
    return [
        d
        for topic in (topics.deliveries, topics.replay)
        for d in deliveries_of(read_to_end(settings, topic))
        if d.destination_id == destination_id
    ]


def wait_successful(statuses: StatusLog, deliveries: list[Delivery], times: int = 1) -> None:
    """Waits until each delivery has ``times`` SUCCESSFUL status events."""
    statuses.wait(
        lambda log: all(
            sum(e.status is Status.SUCCESSFUL for e in log.of(d.delivery_id)) >= times for d in deliveries
        ),
        LIMIT,
    )


@contextmanager
def pipeline(settings: Settings) -> Iterator[StatusLog]:
    """Fan-out and delivery worker running, and the status log."""
    with ExitStack() as stack:
        stack.enter_context(running_fanout(settings))
        stack.enter_context(RunningWorker(settings))
        statuses = StatusLog(settings)
        stack.callback(statuses.close)
        yield statuses


def test_resync_sends_what_a_new_destination_should_hold_once_and_idempotently(settings: Settings) -> None:
    with ExitStack() as stack, pipeline(settings) as statuses:
        receivers = {name: stack.enter_context(Receiver()) for name in ("all", "entity", "since")}
        publish(settings, range(30))
        wait_fanned_out(settings)
        since = dt.datetime.now(dt.UTC)
        time.sleep(0.05)  # record timestamps are in ms: the second batch is strictly after `since`
        publish(settings, range(30, 50))
        wait_fanned_out(settings)
        for name, receiver in receivers.items():
            http_destination(settings, receiver.url + "/hook", f"dst-{name}")

        results = [
            run_resync(settings, ResyncRequest("dst-all", rate=10_000)),
            run_resync(
                settings, ResyncRequest("dst-entity", scope=AbsenceScope(legal_entity="le-de"), rate=10_000)
            ),
            run_resync(settings, ResyncRequest("dst-since", changed_since=since, rate=10_000)),
        ]
        assert all(r.completed and not r.resumed for r in results)
        sent = {name: replays(settings, f"dst-{name}") for name in receivers}
        for deliveries in sent.values():
            wait_successful(statuses, deliveries)

        assert set(receivers["all"].state) == held(range(50))
        assert set(receivers["entity"].state) == held(range(50), "le-de")
        assert set(receivers["since"].state) == held(range(30, 50))
        # Only replays (the fan-out sent nothing to destinations added later), one per absence, at
        # its latest version; the cancelled and deleted ones as DELETE.
        everything = [d for deliveries in sent.values() for d in deliveries]
        assert {d.trigger for d in everything} == {Trigger.REPLAY}
        assert set(Counter(d.absence_id for d in sent["all"]).values()) == {1}
        assert {d.absence_id: d.version for d in sent["all"]} == {
            f"abs-{i:03d}": len(history(i)) for i in range(50)
        }
        assert results[0].upserts == 30 and results[0].deletes == 20

        # A second run: the same delivery ids, delivered again, no new effect at the receiver.
        all_receiver = receivers["all"]
        effects, state = all_receiver.effects, dict(all_receiver.state)
        again = run_resync(settings, ResyncRequest("dst-all", rate=10_000))
        assert (again.upserts, again.deletes) == (30, 20)
        second = replays(settings, "dst-all")
        assert {d.delivery_id for d in second} == {d.delivery_id for d in sent["all"]}
        wait_successful(statuses, sent["all"], times=2)
        assert all_receiver.wait_until(lambda r: r.duplicates >= 50, LIMIT)
        assert all_receiver.effects == effects
        assert all_receiver.state == state


def test_an_interrupted_resync_resumes_from_its_checkpoint(settings: Settings) -> None:
    with Receiver() as receiver, pipeline(settings) as statuses:
        publish(settings, range(50))
        wait_fanned_out(settings)
        http_destination(settings, receiver.url + "/hook", "dst-late")
        stop = threading.Event()

        def stop_after_ten(progress: ResyncProgress) -> None:
            if progress.upserts + progress.deletes >= 10:
                stop.set()

        first = run_resync(settings, ResyncRequest("dst-late", rate=10), stop=stop, progress=stop_after_ten)
        assert not first.completed
        assert 10 <= first.upserts + first.deletes < 50
        assert Checkpoint.path_for(settings, "dst-late").is_file()

        second = run_resync(settings, ResyncRequest("dst-late", rate=10_000))
        assert second.completed and second.resumed
        assert (second.upserts, second.deletes) == (30, 20)  # counted over both runs
        assert not Checkpoint.path_for(settings, "dst-late").exists()

        deliveries = replays(settings, "dst-late")
        # Each absence sent exactly once over both runs: the second one started where the first stopped.
        assert sorted(d.absence_id for d in deliveries) == [f"abs-{i:03d}" for i in range(50)]
        wait_successful(statuses, deliveries)
        assert set(receiver.state) == held(range(50))


def test_replay_failed_resends_only_deliveries_in_error(settings: Settings) -> None:
    with Receiver() as receiver, pipeline(settings) as statuses:
        http_destination(settings, receiver.url + "/hook", "dst-flaky")
        since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        receiver.fail_next(4, status=400)  # permanent: Error at once, no automatic retry
        approved = [
            next_change(make_event(f"abs-{i:03d}"), ChangeKind.APPROVED, AbsenceStatus.APPROVED)
            for i in range(10)
        ]
        produce_events(settings, approved)
        statuses.wait(
            lambda log: (
                len({e.delivery_id for e in log.events if e.status in (Status.SUCCESSFUL, Status.ERROR)})
                == 10
            ),
            LIMIT,
        )
        in_error = {e.delivery_id for e in statuses.events if e.status is Status.ERROR}
        assert len(in_error) == 4

        catch_up(settings)
        failed = list(failed_since(settings, "dst-flaky", since))
        assert {f.delivery_id for f in failed} == in_error
        assert not list(failed_since(settings, "dst-flaky", dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)))
        sent_before = Counter(r.absence_id for r in receiver.requests)

        assert replay_failed(settings, failed, issued_by="tests") == 4
        statuses.wait(
            lambda log: all(
                any(e.status is Status.SUCCESSFUL and e.trigger == "retry" for e in log.of(d))
                for d in in_error
            ),
            LIMIT,
        )
        assert set(receiver.state) == {e.absence.id for e in approved}
        resent = Counter(r.absence_id for r in receiver.requests) - sent_before
        failed_absences = {f.absence_id for f in failed}
        assert set(resent) == failed_absences and set(resent.values()) == {1}


def test_the_api_starts_a_resync_in_the_background_and_reports_its_progress(
    settings: Settings, api: Api
) -> None:
    with running_fanout(settings), api.client("view") as viewer, api.client("configure") as admin:
        publish(settings, range(10))
        wait_fanned_out(settings)
        http_destination(settings, "http://127.0.0.1:9/hook", "dst-api")
        path = "/api/v1/destinations/dst-api/resync"
        assert viewer.post(path).status_code == 403
        assert admin.get(path).status_code == 404  # none started yet
        deadline = time.monotonic() + LIMIT
        while (started := admin.post(path)).status_code == 404:  # the API's table has not seen it yet
            assert time.monotonic() < deadline, "the API never saw the destination"
            time.sleep(0.2)
        assert started.status_code == 202
        while (job := admin.get(path).json())["running"]:
            assert time.monotonic() < deadline, "the resync did not finish in time"
            time.sleep(0.2)
        assert job["completed"] and job["error"] is None
        assert (job["upserts"], job["deletes"]) == (6, 4)
        assert job["done"] == job["total"] == 22
        assert (job["sent"], job["skipped"], job["failed"], job["seconds_left"]) == (10, 12, 0, 0)
        assert job["rate"] > 0
        assert sorted(d.absence_id for d in replays(settings, "dst-api")) == [
            f"abs-{i:03d}" for i in range(10)
        ]


def test_the_cli_resync_stops_on_sigint_and_continues_where_it_stopped(settings: Settings) -> None:
    with running_fanout(settings):
        publish(settings, range(20))
        wait_fanned_out(settings)
        http_destination(settings, "http://127.0.0.1:9/hook", "dst-cli")
        assert absync(settings, "resync", "--destination", "nope").returncode == 1

        checkpoint = Checkpoint.path_for(settings, "dst-cli")
        first = subprocess.Popen(
            [sys.executable, "-m", "absync", "resync", "--destination", "dst-cli", "--rate", "4"],
            env=cli_env(settings),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            deadline = time.monotonic() + LIMIT
            while not checkpoint.is_file():  # written once a second while sending
                assert first.poll() is None and time.monotonic() < deadline, "no checkpoint written"
                time.sleep(0.1)
            first.send_signal(signal.SIGINT)
            out, _ = first.communicate(timeout=LIMIT)
        finally:
            first.kill()
        assert first.returncode == 130 and "interrupted" in out

        second = absync(settings, "resync", "--destination", "dst-cli", "--rate", "1000")
        assert second.returncode == 0, second.stderr
        assert "complete (resumed from its checkpoint): 12 upsert(s), 8 delete(s)" in second.stdout
        # The summary (not a terminal: no bar) adds up over both runs: 44 records, the latest state
        # of each of the 20 absences sent, the 24 older states skipped.
        assert "records  44 of 44 read" in second.stdout
        assert "sent     20\n" in second.stdout and "skipped  24 " in second.stdout
        assert (
            "failed   0 " in second.stdout and "duration " in second.stdout and "records/s" in second.stdout
        )
        assert sorted(d.absence_id for d in replays(settings, "dst-cli")) == [
            f"abs-{i:03d}" for i in range(20)
        ]

    catch_up(settings)  # the view exists (empty): nothing in Error
    replayed = absync(settings, "replay-failed", "--destination", "dst-cli", "--since", "2020-01-01")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith("0 delivery(ies) of dst-cli in Error since 2020-01-01")


def test_a_resync_stops_rather_than_skip_a_record_whose_schema_the_registry_cannot_give(
    bootstrap: str, tmp_path: Path
) -> None:
    """A registry outage during a resync: the record written in the Confluent wire format is asked
    for again, then the resync stops with an error naming it (its checkpoint lets it resume), instead
    of reporting a complete resync that silently left that absence out."""
    # A registry URL where nothing listens: every schema look-up fails as in an outage.
    settings = make_settings(
        bootstrap, tmp_path, schema_registry_url="http://127.0.0.1:9", schema_registry_retry_for=1.0
    )
    create_topics(settings)
    try:
        http_destination(settings, "http://127.0.0.1:9/hook", "dst-registry")
        good = [make_event(f"abs-{i:03d}") for i in range(3)]
        produce_events(settings, good)
        confluent = make_event("abs-confluent")
        # magic byte 0, schema id 7 (big-endian), then an Avro body: the Confluent wire format
        produce_raw(settings, [(confluent.key.encode(), b"\x00\x00\x00\x00\x07" + b"\x02" * 40, None)])
        with pytest.raises(ResyncError, match=r"not available .*run the resync again to resume"):
            run_resync(settings, ResyncRequest("dst-registry", rate=10_000))
    finally:
        delete_topics(settings)
