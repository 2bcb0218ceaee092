"""``absync run --workers 2`` on the real broker: both worker processes take partitions of the fan-out
and delivery groups, every delivery arrives once, and SIGTERM stops the supervisor and every worker
cleanly (exit 0, no worker left)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from confluent_kafka.admin import AdminClient

from absync.workers import worker_components
from streams.kafka import connection_config, group_id
from streams.settings import REPO_ROOT, Settings
from tests.cli_helpers import cli_env
from tests.delivery.harness import SIGNING_SECRET, http_destination
from tests.fakes.receiver import Receiver
from tests.streams_helpers import make_event, produce_events

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

T = TypeVar("T")
SETTLE_S = 120.0
"""Longest wait for a condition (a bound, not an assertion)."""


def eventually(check: Callable[[], T | None], what: str, log_path: Path) -> T:
    deadline = time.monotonic() + SETTLE_S
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {SETTLE_S:g} s\n{log_path.read_text()[-4000:]}")
        time.sleep(0.3)


def members_with_partitions(settings: Settings, component: str) -> int:
    """How many members of the component's consumer group hold at least one partition."""
    admin = AdminClient(connection_config(settings))
    group = group_id(settings, component)
    try:
        description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    except Exception:  # the group may not exist yet
        return 0
    return sum(1 for m in description.members if m.assignment and m.assignment.topic_partitions)


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def test_worker_0_runs_every_part_the_others_the_scaled_ones() -> None:
    assert worker_components(["fanout", "delivery", "http"], 0) == ["fanout", "delivery", "http"]
    assert worker_components(["fanout", "delivery", "http", "projection"], 1) == ["fanout", "delivery"]


def test_two_workers_share_the_partitions_and_deliver_each_change_once(
    settings: Settings, tmp_path: Path
) -> None:
    log_path = tmp_path / "service.log"
    command = [sys.executable, "-m", "absync", "run", "--workers", "2", "--no-create-topics"]
    command += ["--only", "fanout", "--only", "delivery"]
    with Receiver(secrets=[SIGNING_SECRET]) as receiver, log_path.open("ab") as out:
        http_destination(settings, receiver.url + "/hook")
        env = cli_env(settings, ABSYNC_WORKER_ID="wk", ABSYNC_LOG_LEVEL="INFO")
        supervisor = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=out)
        try:
            for component in ("fanout", "delivery"):
                eventually(
                    lambda c=component: members_with_partitions(settings, c) == 2,  # type: ignore[misc]
                    f"both workers hold {component} partitions",
                    log_path,
                )
            workers = children_of(supervisor.pid)
            assert len(workers) == 2
            events = [make_event(f"abs-{i:03d}") for i in range(24)]
            produce_events(settings, events)
            expected = {e.absence.id for e in events}
            eventually(lambda: set(receiver.state) >= expected, "every change delivered", log_path)
            assert supervisor.poll() is None, log_path.read_text()[-4000:]
        finally:
            if supervisor.poll() is None:
                supervisor.send_signal(signal.SIGTERM)
            code = supervisor.wait(90)
    assert code == 0, log_path.read_text()[-4000:]
    assert not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in workers)
    assert sorted(r.absence_id or "" for r in receiver.requests) == sorted(expected)
    assert (receiver.effects, receiver.duplicates) == (len(expected), 0)


def _alive(pid: int) -> bool:
    """A process that still runs (a zombie reaped late by init counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
