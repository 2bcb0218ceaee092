"""The per-destination rate limit: at most ``rate`` requests per second to one destination.

:class:`TokenBucket` is pure (its clock is an argument): a token bucket in its "virtual scheduling"
form (GCRA). Each :meth:`TokenBucket.reserve` books the next free send time and says how long the
caller must wait for it; reservations are served in the order they were made, so the waiting lanes
of one destination go out one after the other, spaced ``1 / rate`` seconds apart. The bucket holds
``burst`` tokens (1 by default): in any window of ``t`` seconds at most ``rate * t + burst``
attempts start. An idle destination does not save up more than ``burst``.

:class:`RateLimits` keeps one bucket per destination in the delivery worker and waits with
``asyncio.sleep`` in the lane of the record being sent: the event loop, the poll thread and the
lanes of other destinations never wait on it. The limit holds for everything the worker sends:
live deliveries, automatic retries, an operator's Retry and resyncs alike.

Per process: each worker process has its own buckets. With several processes the worker gives each
the share of the limit that matches its share of the ``deliveries`` partitions
(:meth:`RateLimits.set_share`): deliveries of one destination are spread over the partitions by key,
and the shares of all the processes add up to the limit, so together they never exceed it; a
destination whose traffic sits on few partitions gets less than its limit, never more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from schemas.destination import MAX_RATE, MIN_RATE


class TokenBucket:
    """At most ``rate`` reservations per second after a burst of ``burst``; pure (no clock of its own).

    ``reserve(now)`` books one send and returns the seconds to wait before it (0: go now). A rate
    change (:meth:`set_rate`) applies to the reservations made after it.
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        if burst < 1:
            raise ValueError("a token bucket holds at least one token")
        self.burst = burst
        self.rate = rate
        self._interval = 1.0 / rate
        self._next: float | None = None
        """The theoretical time of the next send at a steady rate (None: nothing booked yet)."""

    def set_rate(self, rate: float) -> None:
        self.rate = rate
        self._interval = 1.0 / rate

    def reserve(self, now: float) -> float:
        """Books one send; the seconds to wait from ``now`` before it may start (>= 0)."""
        theoretical = now if self._next is None else max(self._next, now)
        wait = max(0.0, theoretical - (self.burst - 1) * self._interval - now)
        self._next = theoretical + self._interval
        return wait

    def idle_since(self, now: float) -> bool:
        """Whether the bucket is full again at ``now`` (forgetting it changes nothing)."""
        return self._next is None or self._next + (self.burst - 1) * self._interval <= now


class RateLimits:
    """One :class:`TokenBucket` per destination; event-loop only (not thread-safe).

    A waiting attempt sleeps in its own lane; when the destination's limit changes
    (:meth:`update`, or an attempt that read the new limit) the bucket starts afresh and every
    attempt waiting on the old limit wakes and books again under the new one, so lifting or raising
    a limit takes effect at once, not after the sends booked under the old one.

    ``clock`` is monotonic seconds (``time.monotonic`` by default); ``sleep`` is awaited for a wait
    (``asyncio.sleep`` by default): both injectable for tests.
    """

    FORGET_AFTER = 1000
    """Buckets kept before the full ones are forgotten (bounded memory as destinations come and go)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[str, tuple[float, TokenBucket]] = {}
        """Destination -> (its limit, its bucket at this process's share of the limit)."""
        self._wakers: dict[str, asyncio.Future[float | None]] = {}
        """Destination -> resolved with the new limit when it changes (attempts waiting on it)."""
        self.share = 1.0
        """This process's share of every limit, in (0, 1]: see the module docstring."""

    def set_share(self, share: float) -> None:
        """Sets this process's share of every limit (its share of the partitions); 0 or less is 1.
        Applies to the sends booked from now on."""
        self.share = share if 0.0 < share <= 1.0 else 1.0

    def update(self, destination_id: str, rate: float | None) -> None:
        """The destination's limit is now ``rate`` (None: none, or the destination is gone)."""
        known = self._buckets.get(destination_id)
        if (known[0] if known else None) == rate:
            return
        self._buckets.pop(destination_id, None)
        waker = self._wakers.pop(destination_id, None)
        if waker is not None and not waker.done():
            waker.set_result(rate)

    def reserve(self, destination_id: str, rate: float | None) -> float:
        """Books one send to ``destination_id`` limited to ``rate`` (None: no limit); seconds to wait."""
        self.update(destination_id, rate)
        if rate is None:
            return 0.0
        # clamped: a record of the destinations topic is validated when written, but never trusted
        effective = min(max(rate, MIN_RATE), MAX_RATE) * self.share
        now = self._clock()
        known = self._buckets.get(destination_id)
        if known is None:
            if len(self._buckets) >= self.FORGET_AFTER:
                self._buckets = {k: v for k, v in self._buckets.items() if not v[1].idle_since(now)}
                self._wakers = {k: w for k, w in self._wakers.items() if k in self._buckets}
            bucket = TokenBucket(effective)
            self._buckets[destination_id] = (rate, bucket)
        else:
            bucket = known[1]
            if bucket.rate != effective:  # this process's share changed
                bucket.set_rate(effective)
        return bucket.reserve(now)

    async def wait(self, destination_id: str, rate: float | None) -> float:
        """Waits for the next send to ``destination_id`` allowed by ``rate`` (booking again if the
        limit changes meanwhile); returns the seconds waited, by the clock."""
        began = self._clock()
        while True:
            delay = self.reserve(destination_id, rate)
            if delay <= 0:
                return self._clock() - began
            waker = self._wakers.get(destination_id)
            if waker is None:
                waker = self._wakers[destination_id] = asyncio.get_running_loop().create_future()
            sleeper = asyncio.ensure_future(self._sleep(delay))
            either: list[asyncio.Future[Any]] = [sleeper, waker]
            try:
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
            if not waker.done():
                return self._clock() - began
            rate = waker.result()
