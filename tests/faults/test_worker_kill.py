"""Fault 1: a worker killed with SIGKILL at random points, 20 times over one stream of changes.

Each round publishes a slice of the stream, starts the worker (same ``ABSYNC_WORKER_ID``, so it
fences its predecessor's open transaction at once), lets it make a random number of requests, and
kills it. Some requests fail (503) so that retry records are in flight at some kills. At the end one
worker runs to completion and the receiver must hold exactly the source state, each change applied
once.
"""

from __future__ import annotations

import random
import signal

import pytest

from streams.settings import Settings
from tests.delivery.harness import http_destination
from tests.fakes.receiver import Receiver
from tests.faults.conftest import (
    Workers,
    absence_stream,
    assert_converged,
    held,
    requests_at_least,
    versions,
    wait_idle,
    wait_state,
)
from tests.streams_helpers import produce_events

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.timeout(1200)]

KILLS = 20
ABSENCES = 100
SEED = 20261125
"""Fixed: a failure can be replayed with the same kill points."""
ROUND_BOUND_S = 90.0
"""Longest wait for a restarted worker to make its requests (a bound, not an assertion)."""


def test_sigkill_at_random_points_twenty_times(
    settings: Settings, receiver: Receiver, workers: Workers
) -> None:
    rng = random.Random(SEED)
    http_destination(settings, receiver.url + "/hook")
    events, latest = absence_stream("abs-kill", ABSENCES)
    expected = held(latest)
    size = -(-len(events) // KILLS)
    for round_number in range(KILLS):
        if round_number % 5 == 2:
            receiver.fail_next(rng.randint(3, 10), 503)  # retry records waiting when it dies
        produce_events(settings, events[round_number * size : (round_number + 1) * size])
        before = len(receiver.requests)
        workers.start("w1")
        wanted = before + rng.randint(1, 12)
        made = receiver.wait_until(requests_at_least(wanted), timeout=ROUND_BOUND_S)
        assert made, f"round {round_number}: the worker made no progress\n{workers.logs()}"
        assert workers.alive() == ["w1"], f"round {round_number}: the worker exited\n{workers.logs()}"
        workers.signal("w1", signal.SIGKILL)
    unfinished_at_last_kill = versions(receiver) != expected

    workers.start("w1")
    assert wait_state(receiver, expected), workers.logs()
    wait_idle(settings)
    assert unfinished_at_last_kill, "the last kill came after the work was done: no fault injected"
    assert workers.alive() == ["w1"], workers.logs()
    assert_converged("1. worker SIGKILL x20", receiver, expected, workers.logs())
