"""A worker process killed with SIGKILL in the middle of 2,000 changes and a resync's replayed
deliveries loses nothing and, once restarted, causes no duplicate effect at the receiver (repeated
webhook-ids are deduplicated)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.models import AbsenceEvent, AbsenceStatus, ChangeKind
from streams.settings import REPO_ROOT, Settings
from streams.topics import Topics
from tests.delivery.harness import Feed, change, http_destination, wait_consumed
from tests.fakes.receiver import Receiver
from tests.streams_helpers import make_event, next_change, produce_events

pytestmark = pytest.mark.kafka

ABSENCES = 500
REPLAYED = 100
"""Deliveries waiting on the replay lane when the worker starts (a resync's)."""


def changes() -> tuple[list[AbsenceEvent], dict[str, int]]:
    """2,000 changes (4 per absence, every other absence ends deleted) and the state they lead to."""
    events: list[AbsenceEvent] = []
    final: dict[str, int] = {}
    for i in range(ABSENCES):
        created = make_event(f"abs-kill-{i}")
        approved = next_change(created, ChangeKind.APPROVED, AbsenceStatus.APPROVED)
        updated = next_change(approved, ChangeKind.UPDATED, AbsenceStatus.APPROVED)
        last = (
            next_change(updated, ChangeKind.UPDATED, AbsenceStatus.APPROVED)
            if i % 2 == 0
            else next_change(updated, ChangeKind.DELETED, AbsenceStatus.APPROVED)
        )
        events += [created, approved, updated, last]
        if i % 2 == 0:
            final[created.absence.id] = last.version
    return events, final


def start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """``absync run --only fanout --only delivery`` in its own process, on this test's topics."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ABSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "ABSYNC_PARTITIONS": str(settings.partitions),
        "ABSYNC_RETRY_DELAYS": ",".join(f"{d:g}s" for d in settings.retry_delays),
        "ABSYNC_CONNECTOR_TIMEOUT": str(settings.connector_timeout),
        "ABSYNC_DATA_DIR": str(settings.data_dir),
        "ABSYNC_LOG_LEVEL": "WARNING",
        "ABSYNC_ENV": "development",  # the embedded secret key; the receiver is on loopback
    }
    command = [
        sys.executable,
        "-m",
        "absync",
        "run",
        "--only",
        "fanout",
        "--only",
        "delivery",
        "--no-create-topics",
    ]
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=out)


def test_sigkill_in_the_middle_loses_nothing_and_duplicates_no_effect(
    settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    http_destination(settings, receiver.url + "/hook")
    events, final = changes()
    replayed = [change(f"abs-replay-{i}", 1, ChangeKind.APPROVED) for i in range(REPLAYED)]
    Feed(settings).replayed(*replayed)
    final.update({d.absence_id: 1 for d in replayed})
    receiver.fail_next(40, 503)  # some deliveries wait in retry topics when the worker dies
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    try:
        produce_events(settings, events)
        assert receiver.wait_until(lambda r: len(r.requests) >= 400, timeout=120), log.read_text()[-3000:]
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
        unfinished_at_kill = {aid: doc["version"] for aid, doc in list(receiver.state.items())} != final
        worker = start_worker(settings, log)
        settled = receiver.wait_until(
            lambda r: {aid: doc["version"] for aid, doc in r.state.items()} == final, timeout=240
        )
        assert settled, log.read_text()[-3000:]
        wait_consumed(settings, Topics(settings).deliveries, timeout=120)
        wait_consumed(settings, Topics(settings).replay, timeout=120)
        for topic in Topics(settings).retries:
            wait_consumed(settings, topic, timeout=120)
    finally:
        worker.terminate()
        worker.wait(60)

    assert unfinished_at_kill, "the worker was killed after it had finished"
    assert {aid: doc["version"] for aid, doc in receiver.state.items()} == final
    effects = [r for r in receiver.requests if r.outcome == "effect"]
    message_ids = [r.headers["webhook-id"] for r in effects]
    assert len(message_ids) == len(set(message_ids)), "a delivery had two effects"
    for absence_id in {r.absence_id for r in effects}:
        versions = [r.json()["version"] for r in effects if r.absence_id == absence_id]
        assert versions == sorted(set(versions)), f"{absence_id}: a change applied twice or backwards"
