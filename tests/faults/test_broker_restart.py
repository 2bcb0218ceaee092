"""Fault 2: the (single) broker restarts while a worker process has work in flight.

The test starts its own broker on another port (deploy/local/broker.sh), never the shared test
broker, and stops it at the end. Some requests fail (503) so that records wait in retry topics across
the restart. The worker must ride the outage out (librdkafka reconnects; aborted transactions are
redone) and the receiver must end with exactly the source state.

The worker runs supervised, as in production (Kubernetes restarts a pod whose process ends): after a
restart librdkafka 2.16 may block the fan-out for good in ``send_offsets_to_transaction``
(confluentinc/librdkafka#5456, docs/reliability.md finding 2); the stall watchdog then ends the
process (exit code 70) and the supervisor starts it again, which fences and aborts the stuck
transaction. Any other way of ending is a failure.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.settings import REPO_ROOT, Settings
from tests.delivery.harness import http_destination, isolated
from tests.fakes.receiver import Receiver
from tests.faults.conftest import (
    Workers,
    absence_stream,
    assert_converged,
    held,
    requests_at_least,
    wait_idle,
    wait_state,
)
from tests.streams_helpers import produce_events

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.timeout(600)]

PORT = 39192
"""Own broker (controller on PORT + 1): the shared 39092 broker is never restarted."""
SCRIPT = REPO_ROOT / "deploy" / "local" / "broker.sh"
ABSENCES = 60
STALL_TIMEOUT_S = 40
"""The watchdog's limit in this test (default 180 s): longer than any call's own timeout (30 s)."""
RECOVERY_BOUND_S = 180.0
"""Longest wait for the pipeline to catch up after the restart (a bound, not an assertion)."""


def broker_sh(command: str) -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT), command],
        env={**os.environ, "ABSYNC_BROKER_PORT": str(PORT)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"broker.sh {command} failed:\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def own_broker() -> Iterator[str]:
    broker_sh("start")
    try:
        yield f"127.0.0.1:{PORT}"
    finally:
        broker_sh("stop")


@pytest.fixture
def settings(own_broker: str, tmp_path: Path) -> Iterator[Settings]:
    with isolated(own_broker, tmp_path) as settings:
        yield settings


def test_broker_restart_with_work_in_flight(settings: Settings, receiver: Receiver, workers: Workers) -> None:
    http_destination(settings, receiver.url + "/hook")
    events, latest = absence_stream("abs-restart", ABSENCES)
    half = len(events) // 2
    receiver.fail_next(10, 503)
    workers.supervise(ABSYNC_STALL_TIMEOUT=str(STALL_TIMEOUT_S))
    workers.start("w1")
    produce_events(settings, events[:half])
    assert receiver.wait_until(requests_at_least(30), timeout=120), workers.logs()

    broker_sh("stop")
    broker_sh("start")
    produce_events(settings, events[half:])

    assert wait_state(receiver, held(latest), timeout=RECOVERY_BOUND_S), workers.logs()
    wait_idle(settings)
    assert workers.alive() == ["w1"], workers.logs()
    assert all(code == 70 for _, code in workers.restarts), f"{workers.restarts}\n{workers.logs()}"
    assert_converged("2. broker restart", receiver, held(latest), workers.logs())
