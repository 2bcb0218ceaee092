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


def test_each_destination_has_its_own_bucket_and_unlimited_never_waits() -> None:
    clock = Clock()
    limits = RateLimits(clock)
    assert [limits.reserve("slow", 2.0) for _ in range(3)] == [0.0, 0.5, 1.0]
    assert [limits.reserve("fast", None) for _ in range(100)] == [0.0] * 100
    assert limits.reserve("other", 2.0) == 0.0, "another destination's bucket is untouched"
    clock.now += 10
    assert limits.reserve("slow", 2.0) == 0.0


def test_the_process_share_divides_the_limit() -> None:
    clock = Clock()
    limits = RateLimits(clock)
    limits.set_share(0.5)  # this process holds half the partitions
    assert [limits.reserve("d", 4.0) for _ in range(3)] == [0.0, 0.5, 1.0]
    limits.set_share(0.0)  # nothing assigned (yet): never more than the whole limit
    assert limits.share == 1.0


def test_wait_sleeps_the_reserved_time_without_blocking_the_loop() -> None:
    clock = Clock()
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async def main() -> None:
        limits = RateLimits(clock, fake_sleep)
        await asyncio.gather(*(limits.wait("d", 4.0) for _ in range(4)))

    asyncio.run(main())
    assert slept == [0.25, 0.5, 0.75]


def test_waiting_attempts_book_again_when_the_limit_changes() -> None:
    """Lifting the limit releases every waiting attempt at once; a new limit re-spaces them."""
    clock = Clock()
    slept: list[float] = []

    async def never(seconds: float) -> None:  # a sleep that ends only when cancelled
        slept.append(seconds)
        await asyncio.get_running_loop().create_future()

    async def main(new_rate: float | None) -> int:
        limits = RateLimits(clock, never)
        waits = [asyncio.ensure_future(limits.wait("d", 0.1)) for _ in range(5)]
        others = asyncio.ensure_future(limits.wait("other", 0.1))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        limits.update("other", 0.1)  # unchanged: nobody wakes
        limits.update("d", new_rate)
        done, _ = await asyncio.wait(waits, timeout=0.2)
        assert others.done() and not others.result(), "the first of 'other' went at once"
        return len(done)

    assert asyncio.run(main(None)) == 5
    assert slept == [10.0, 20.0, 30.0, 40.0]

    slept.clear()
    # the first went at once; of the four woken, one goes at once under the new limit, three wait again
    assert asyncio.run(main(2.0)) == 2
    assert slept == [10.0, 20.0, 30.0, 40.0, 0.5, 1.0, 1.5]


def test_forgotten_buckets_are_only_full_ones() -> None:
    clock = Clock()
    limits = RateLimits(clock)
    limits.FORGET_AFTER = 3
    limits.reserve("busy", 1.0)
    limits.reserve("busy", 1.0)  # booked until now + 2
    limits.reserve("a", 1.0)
    limits.reserve("b", 1.0)
    clock.now += 1.5
    limits.reserve("c", 1.0)  # "a" and "b" are full again: forgotten; "busy" is not
    assert limits.reserve("busy", 1.0) == pytest.approx(0.5)
