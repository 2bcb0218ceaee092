"""A destination that hangs until its timeout blocks no one else (figures: bench/slow_destination.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from processors.delivery import DESTINATION_SHARE
from schemas.delivery import Status
from schemas.models import ChangeKind
from streams.settings import Settings
from tests.delivery.harness import Feed, RunningWorker, StatusLog, change, http_destination, isolated
from tests.fakes.receiver import Receiver

pytestmark = pytest.mark.kafka


@pytest.fixture
def narrow_settings(bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    """8 concurrency slots in all."""
    with isolated(bootstrap, tmp_path, delivery_concurrency=8) as settings:
        yield settings


def test_a_hanging_destination_does_not_hold_back_another(narrow_settings: Settings) -> None:
    """A answers nothing for 20 s; B's deliveries all succeed before any attempt to A has ended.

    8 slots in all, at most half of them per destination: without key-level lanes and
    per-destination shares, A's 30 hanging keys would hold every slot and B would wait for A's
    timeouts.
    """
    settings = narrow_settings
    statuses = StatusLog(settings)
    with Receiver() as slow, Receiver() as fast:
        http_destination(settings, slow.url + "/hook", dest_id="dst-slow", timeout="20s")
        http_destination(settings, fast.url + "/hook", dest_id="dst-fast")
        slow.hang_next(1000, 60)
        to_slow = [change(f"abs-s{i}", 1, ChangeKind.APPROVED, destination_id="dst-slow") for i in range(30)]
        to_fast = [change(f"abs-f{i}", 1, ChangeKind.APPROVED, destination_id="dst-fast") for i in range(30)]
        interleaved = [d for pair in zip(to_slow, to_fast, strict=True) for d in pair]
        worker = RunningWorker(settings).start()
        try:
            Feed(settings).deliveries(*interleaved)
            statuses.wait(lambda log: all(log.of(d.delivery_id) for d in to_fast))
            slow_events_then = sum(len(statuses.of(d.delivery_id)) for d in to_slow)
            fast_requests = len(fast.requests)
            slow_requests = len(slow.requests)
        finally:
            slow.stop()  # the hanging calls fail at once, so the worker stops without waiting 20 s
            worker.stop()
    statuses.close()

    assert all(statuses.of(d.delivery_id)[0].status is Status.SUCCESSFUL for d in to_fast)
    assert len(fast.state) == 30 and fast_requests == 30
    assert slow_events_then == 0, "an attempt to the hanging destination ended before B was served"
    share = settings.delivery_concurrency // DESTINATION_SHARE
    assert 1 <= slow_requests <= share, "the hanging destination used more than its share of the slots"
