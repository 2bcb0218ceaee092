"""The per-destination rate limit: at most ``rate`` requests per second to one destination.

:class:`TokenBucket` is pure (its clock is an argument): a token bucket in its "virtual scheduling"
form (GCRA). :meth:`TokenBucket.delay` says how long until a send may start, :meth:`TokenBucket.take`
records one that starts. The bucket holds ``burst`` tokens (1 by default): in any window of ``t``
seconds at most ``rate * t + burst`` sends start. An idle destination saves up no more than ``burst``.

:class:`RateLimits` keeps one bucket per destination in the delivery worker. The attempts of one
destination take their turn one after the other (a FIFO lock per destination), each sleeping with
``asyncio.sleep`` in its own lane until the bucket has a token *by the clock when it wakes*: a send
is recorded when it actually starts, so an event loop that wakes late (a busy machine) makes the
sends later, never closer together. The event loop, the poll thread and the lanes of other
destinations never wait on it. The limit holds for everything the worker sends: live deliveries,
automatic retries, an operator's Retry and resyncs alike.

A changed limit (:meth:`RateLimits.update`, fed by the destination table) starts the bucket afresh
and wakes the attempt sleeping on the old one: lifting or raising a limit takes effect at once.

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
    """At most ``rate`` sends per second after a burst of ``burst``; pure (no clock of its own).

    A rate change (:meth:`set_rate`) applies to the sends after it.
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        if burst < 1:
            raise ValueError("a token bucket holds at least one token")
        self.burst = burst
        self.rate = rate
        self._interval = 1.0 / rate
        self._next: float | None = None
        """The theoretical time of the next send at a steady rate (None: nothing sent yet)."""

    def set_rate(self, rate: float) -> None:
        self.rate = rate
        self._interval = 1.0 / rate

    def delay(self, now: float) -> float:
        """Seconds from ``now`` until a send may start (0: now)."""
        if self._next is None:
            return 0.0
        return max(0.0, self._next - (self.burst - 1) * self._interval - now)

    def take(self, now: float) -> None:
        """Records a send that starts at ``now``."""
        self._next = (now if self._next is None else max(self._next, now)) + self._interval

    def reserve(self, now: float) -> float:
        """Books the next send for a caller that asks at ``now``: the seconds it must wait (>= 0)."""
        wait = self.delay(now)
        self.take(now + wait)
        return wait

    def idle_since(self, now: float) -> bool:
        """Whether the bucket is full again at ``now`` (forgetting it changes nothing)."""
        return self._next is None or self._next + (self.burst - 1) * self._interval <= now


class RateLimits:
    """One :class:`TokenBucket` per destination; event-loop only (not thread-safe).

    ``clock`` is monotonic seconds (``time.monotonic`` by default); ``sleep`` is awaited for a wait
    (``asyncio.sleep`` by default): both injectable for tests.
    """

    FORGET_AFTER = 1000
    """Buckets kept before the idle ones are forgotten (bounded memory as destinations come and go)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._limits: dict[str, float] = {}
        """Destination -> its limit, as last known (from an attempt or the destination table)."""
        self._buckets: dict[str, TokenBucket] = {}
        self._turns: dict[str, asyncio.Lock] = {}
        """Destination -> whose turn it is to wait for the bucket (FIFO)."""
        self._wakers: dict[str, asyncio.Future[None]] = {}
        """Destination -> resolved when its limit changes (the attempt sleeping on it books again)."""
        self.share = 1.0
        """This process's share of every limit, in (0, 1]: see the module docstring."""

    def set_share(self, share: float) -> None:
        """Sets this process's share of every limit (its share of the partitions); 0 or less is 1."""
        self.share = share if 0.0 < share <= 1.0 else 1.0

    def update(self, destination_id: str, rate: float | None) -> None:
        """The destination's limit is now ``rate`` (None: none, or the destination is gone)."""
        if self._limits.get(destination_id) == rate:
            return
        if rate is None:
            self._limits.pop(destination_id, None)
        else:
            self._limits[destination_id] = rate
        self._buckets.pop(destination_id, None)
        waker = self._wakers.pop(destination_id, None)
        if waker is not None and not waker.done():
            waker.set_result(None)

    def _bucket(self, destination_id: str) -> TokenBucket | None:
        rate = self._limits.get(destination_id)
        if rate is None:
            return None
        # clamped: a record of the destinations topic is validated when written, but never trusted
        effective = min(max(rate, MIN_RATE), MAX_RATE) * self.share
        bucket = self._buckets.get(destination_id)
        if bucket is None:
            if len(self._buckets) >= self.FORGET_AFTER:
                now = self._clock()
                idle = [k for k, b in self._buckets.items() if b.idle_since(now) and not self._busy(k)]
                for key in idle:
                    del self._buckets[key]
                    self._turns.pop(key, None)
                    self._wakers.pop(key, None)
            bucket = self._buckets[destination_id] = TokenBucket(effective)
        elif bucket.rate != effective:  # this process's share changed
            bucket.set_rate(effective)
        return bucket

    def _busy(self, destination_id: str) -> bool:
        turn = self._turns.get(destination_id)
        return turn is not None and turn.locked()

    async def wait(self, destination_id: str, rate: float | None) -> float:
        """Waits until a send to ``destination_id`` may start under its limit (``rate``, as the
        attempt read it; a newer one from :meth:`update` wins), and records it as started.
        Returns the seconds waited, by the clock."""
        self.update(destination_id, rate)
        began = self._clock()
        if destination_id not in self._limits:
            return 0.0
        turn = self._turns.setdefault(destination_id, asyncio.Lock())
        async with turn:
            while True:
                bucket = self._bucket(destination_id)
                if bucket is None:  # lifted while waiting
                    return self._clock() - began
                now = self._clock()
                delay = bucket.delay(now)
                if delay <= 0:
                    bucket.take(now)
                    return now - began
                waker = self._wakers.get(destination_id)
                if waker is None:
                    waker = self._wakers[destination_id] = asyncio.get_running_loop().create_future()
                sleeper = asyncio.ensure_future(self._sleep(delay))
                either: list[asyncio.Future[Any]] = [sleeper, waker]
                try:
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleeper.cancel()
