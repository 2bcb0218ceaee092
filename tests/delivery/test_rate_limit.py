"""The per-destination rate limit (issue 16 item 6), end to end: real broker, delivery worker, the
http connector and a loopback receiver that records when each request arrived.

The limit is checked where it matters, at the receiver: in any one-second window it never sees more
than the rate, plus the bucket's burst (1), plus two for jitter: the worker starts attempts at least
``1 / rate`` apart by its clock, but on a loaded machine one request can spend longer than another
between the start of its attempt and its arrival (a connector thread scheduled late), so arrivals can
come closer together than the starts. Without the limit they come as fast as the worker sends them.
An unlimited destination beside it is not slowed: its deliveries all arrive while the limited one is
still draining (liveness, generous timeouts; no timed assertion).
"""

from __future__ import annotations

import pytest

from processors.resync import ResyncRequest, run_resync
from schemas.delivery import Delivery, Status, Trigger
from schemas.models import ChangeKind
from streams.settings import Settings
from tests.delivery.harness import Feed, RunningWorker, StatusLog, change, http_destination
from tests.fakes.receiver import Receiver
from tests.test_resync import held, pipeline, publish, replays, wait_fanned_out, wait_successful

pytestmark = pytest.mark.kafka

BURST = 1
JITTER = 2
LIMIT = 180.0
"""Seconds a wait may take before the test gives up (a bound, not an assertion)."""


def most_in_window(times: list[float], window: float = 1.0) -> int:
    """The most arrivals in any window of ``window`` seconds (each window starting at an arrival)."""
    ordered = sorted(times)
    return max((sum(1 for u in ordered if t <= u < t + window) for t in ordered), default=0)


def arrivals(receiver: Receiver, path: str) -> list[float]:
    return [r.arrived_monotonic for r in list(receiver.requests) if r.path.startswith(path)]


def to(destination_id: str, prefix: str, count: int) -> list[Delivery]:
    return [
        change(f"abs-{prefix}{i:02d}", 1, ChangeKind.APPROVED, destination_id=destination_id)
        for i in range(count)
    ]


def all_successful(deliveries: list[Delivery]) -> object:
    return lambda log: all(log.latest(d.delivery_id) is Status.SUCCESSFUL for d in deliveries)


def test_a_limited_destination_never_gets_more_than_its_rate_and_an_unlimited_one_is_not_slowed(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    rate = 5.0
    http_destination(settings, receiver.url + "/limited", "dst-limited", rate_limit=rate)
    http_destination(settings, receiver.url + "/free", "dst-free")
    limited, free = to("dst-limited", "l", 40), to("dst-free", "f", 40)
    feed = Feed(settings)
    with RunningWorker(settings):
        feed.deliveries(*limited)  # the limited destination's backlog first: the free one is behind it
        feed.deliveries(*free)
        assert receiver.wait_until(lambda r: len(arrivals(r, "/free")) >= len(free), LIMIT)
        assert len(arrivals(receiver, "/limited")) < len(limited), (
            "every unlimited delivery arrived while the limited destination was still draining"
        )
        statuses.wait(all_successful(limited + free), LIMIT)
    limited_times = arrivals(receiver, "/limited")
    assert len(limited_times) == len(limited)
    assert most_in_window(limited_times) <= rate + BURST + JITTER


def test_retries_share_the_limit_with_first_attempts(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    """Every first attempt fails (503, retryable); the retries (1 s later, in the retry topic) come
    back while first attempts are still waiting for the limit, and go through the same bucket."""
    rate = 2.0
    http_destination(settings, receiver.url + "/limited", "dst-limited", rate_limit=rate)
    deliveries = to("dst-limited", "r", 8)
    receiver.fail_next(len(deliveries), 503, path="/limited")
    with RunningWorker(settings):
        Feed(settings).deliveries(*deliveries)
        statuses.wait(all_successful(deliveries), LIMIT)
    times = arrivals(receiver, "/limited")
    assert len(times) == 2 * len(deliveries), "one failed attempt and one retry each"
    assert all(any(e.status is Status.PENDING for e in statuses.of(d.delivery_id)) for d in deliveries)
    assert most_in_window(times) <= rate + BURST + JITTER


def test_a_change_of_the_limit_applies_without_a_restart(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    """The worker re-reads the destination before each attempt: lifting the limit takes effect on the
    deliveries still waiting behind it, and setting it again slows the next ones."""
    http_destination(settings, receiver.url + "/d", "dst-limited", rate_limit=0.5)
    slow = to("dst-limited", "s", 30)
    feed = Feed(settings)
    with RunningWorker(settings):
        feed.deliveries(*slow)
        assert receiver.wait_until(lambda r: len(arrivals(r, "/d")) >= 2, LIMIT)
        http_destination(settings, receiver.url + "/d", "dst-limited", rate_limit=None)
        statuses.wait(all_successful(slow), LIMIT)
    # 30 at one every 2 s would have taken a minute; lifted, the rest went out at once: they crowd
    # into one second, which 0.5/s would never allow.
    assert most_in_window(arrivals(receiver, "/d")) > 0.5 + BURST + JITTER


def test_a_resync_respects_the_limit(settings: Settings, receiver: Receiver) -> None:
    """A destination added after 50 absences were published, resynced as fast as the resync can
    send (its own request rate far above the limit): the receiver gets them at the limit."""
    rate = 10.0
    with pipeline(settings) as statuses:
        publish(settings, range(50))
        wait_fanned_out(settings)
        http_destination(settings, receiver.url + "/hook", "dst-limited", rate_limit=rate)
        assert run_resync(settings, ResyncRequest("dst-limited", rate=10_000)).completed
        sent = replays(settings, "dst-limited")
        wait_successful(statuses, sent)
    assert {d.trigger for d in sent} == {Trigger.REPLAY} and len(sent) == 50
    assert set(receiver.state) == held(range(50))
    times = arrivals(receiver, "/hook")
    assert len(times) == 50
    assert most_in_window(times) <= rate + BURST + JITTER
