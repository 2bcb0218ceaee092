"""The per-destination rate limit, pure: the token bucket and the per-destination buckets, on a clock
the test controls (no broker, no sleeping)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from processors.delivery.rate_limit import RateLimits, TokenBucket
from schemas.destination import MAX_RATE, MIN_RATE, check_rate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def send_times(bucket: TokenBucket, requests: list[float]) -> list[float]:
    """When each request (made at the given times) may start."""
    return [t + bucket.reserve(t) for t in requests]


def most_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(sum(1 for u in times if t <= u < t + window) for t in times)


def test_a_burst_of_requests_is_spaced_one_interval_apart_in_order() -> None:
    bucket = TokenBucket(5.0)
    starts = send_times(bucket, [0.0] * 40)
    assert starts[0] == 0.0
    assert starts == sorted(starts)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap == pytest.approx(0.2) for gap in gaps)
    assert most_in_window(starts, 0.99) == 5


def test_no_window_holds_more_than_rate_times_length_plus_burst() -> None:
    for rate, burst in ((5.0, 1), (0.1, 1), (1000.0, 1), (3.0, 4)):
        bucket = TokenBucket(rate, burst)
        # requests arriving irregularly: bursts, gaps, one every so often
        arrivals = sorted([0.0] * 20 + [0.05 * i for i in range(50)] + [7.0 + 0.3 * i for i in range(30)])
        starts = send_times(bucket, arrivals)
        for window in (1.0, 2.5, 10.0):
            assert most_in_window(starts, window) <= rate * window + burst
        assert all(s >= a for s, a in zip(starts, arrivals, strict=True)), "never before it was asked"


def test_an_idle_destination_does_not_save_up_beyond_its_burst() -> None:
    bucket = TokenBucket(2.0, burst=3)
    send_times(bucket, [0.0] * 5)
    # an hour later: three go at once (the burst), then one every half second again
    later = send_times(bucket, [3600.0] * 6)
    assert later[:3] == [3600.0] * 3
    assert later[3:] == pytest.approx([3600.5, 3601.0, 3601.5])
    assert bucket.idle_since(3700.0)


def test_spread_requests_under_the_limit_never_wait() -> None:
    bucket = TokenBucket(10.0)
    assert all(bucket.reserve(t * 0.101) == 0.0 for t in range(100))


def test_a_rate_change_applies_to_the_next_reservations() -> None:
    bucket = TokenBucket(1.0)
    assert send_times(bucket, [0.0, 0.0]) == [0.0, 1.0]
    bucket.set_rate(10.0)
    assert send_times(bucket, [0.0, 0.0]) == pytest.approx([2.0, 2.1])


@pytest.mark.parametrize("rate", [MIN_RATE, 1, 5.5, MAX_RATE, None])
def test_valid_rates(rate: float | None) -> None:
    assert check_rate(rate) == (None if rate is None else float(rate))


@pytest.mark.parametrize(
    ("rate", "message"),
    [
        (0, "between 0.1 and 1000"),
        (0.05, "between 0.1 and 1000"),
        (-1, "between 0.1 and 1000"),
        (1000.5, "between 0.1 and 1000"),
        (float("inf"), "between 0.1 and 1000"),
        (float("nan"), "a number of requests per second"),
        (True, "a number of requests per second"),
        ("5", "a number of requests per second"),
    ],
)
def test_invalid_rates_say_why(rate: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_rate(rate)  # type: ignore[arg-type]


class Sleeper:
    """A sleep on the test's clock: it moves the clock, by ``late`` more than asked (a busy loop)."""

    def __init__(self, clock: Clock, late: float = 0.0) -> None:
        self.clock, self.late, self.slept = clock, late, []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.now += seconds + self.late
        await asyncio.sleep(0)


def starts(limits: RateLimits, clock: Clock, destination: str, rate: float | None, n: int) -> list[float]:
    """When each of ``n`` attempts, all asked at once, started (by the clock)."""

    async def main() -> list[float]:
        out: list[float] = []

        async def one() -> None:
            await limits.wait(destination, rate)
            out.append(clock.now)

        await asyncio.gather(*(one() for _ in range(n)))
        return out

    return asyncio.run(main())


def test_each_destination_has_its_own_bucket_and_unlimited_never_waits() -> None:
    clock = Clock()
    limits = RateLimits(clock, Sleeper(clock))
    assert starts(limits, clock, "slow", 2.0, 3) == [1000.0, 1000.5, 1001.0]
    assert starts(limits, clock, "fast", None, 100) == [1001.0] * 100
    assert starts(limits, clock, "other", 2.0, 1) == [1001.0], "another destination's bucket is untouched"
    clock.now += 10
    assert starts(limits, clock, "slow", 2.0, 1) == [1011.0]


def test_a_late_wake_up_makes_sends_later_never_closer() -> None:
    """The loop wakes each sleeper 0.3 s late: the next send is still a full interval after the
    actual start of the one before (a busy machine never bunches sends up)."""
    clock = Clock()
    limits = RateLimits(clock, Sleeper(clock, late=0.3))
    times = starts(limits, clock, "d", 2.0, 6)
    assert all(b - a >= 0.5 for a, b in itertools.pairwise(times))
    assert most_in_window(times, 1.0) <= 2 + 1


def test_the_process_share_divides_the_limit() -> None:
    clock = Clock()
    limits = RateLimits(clock, Sleeper(clock))
    limits.set_share(0.5)  # this process holds half the partitions
    assert starts(limits, clock, "d", 4.0, 3) == [1000.0, 1000.5, 1001.0]
    limits.set_share(0.0)  # nothing assigned (yet): never more than the whole limit
    assert limits.share == 1.0


def test_waiting_attempts_go_at_once_when_the_limit_is_lifted_and_respace_when_it_changes() -> None:
    clock = Clock()
    slept: list[float] = []

    async def never(seconds: float) -> None:  # a sleep that ends only when cancelled
        slept.append(seconds)
        await asyncio.get_running_loop().create_future()

    async def main(new_rate: float | None) -> int:
        limits = RateLimits(clock, never)
        waits = [asyncio.ensure_future(limits.wait("d", 0.1)) for _ in range(5)]
        other = asyncio.ensure_future(limits.wait("other", 0.1))
        for _ in range(5):
            await asyncio.sleep(0)
        limits.update("other", 0.1)  # unchanged: nobody wakes
        limits.update("d", new_rate)
        done, _ = await asyncio.wait(waits, timeout=0.2)
        assert other.done(), "the first of 'other' went at once"
        return len(done)

    assert asyncio.run(main(None)) == 5  # the first went at once; the four others when lifted
    assert slept == [10.0]  # only the one whose turn it was slept (the others queue behind it)

    slept.clear()
    assert asyncio.run(main(2.0)) == 2  # the first, then one at once under the new limit
    assert slept == [10.0, 0.5]


def test_forgotten_buckets_are_only_idle_ones() -> None:
    clock = Clock()
    limits = RateLimits(clock, Sleeper(clock))
    limits.FORGET_AFTER = 2
    starts(limits, clock, "a", 1.0, 1)
    starts(limits, clock, "busy", 1.0, 1)  # its next send is due at now + 1
    clock.now += 0.5
    starts(limits, clock, "c", 1.0, 1)  # at 1000.5: "a" and "busy" still busy, nothing forgotten
    clock.now += 0.6
    starts(limits, clock, "d", 1.0, 1)  # at 1001.1: "a" and "busy" idle, forgotten; "c" is not
    # "c" kept its bucket: its next send is a full second after the one at 1000.5, not at once
    assert starts(limits, clock, "c", 1.0, 2) == [1001.5, 1002.5]
