"""Ordered lanes per key, run in parallel on asyncio: :class:`KeyLanes`.

Jobs of one key run one after the other, in the order submitted; jobs of different keys run at the
same time, at most ``total`` at once, and a group of keys (a destination) holds at most the share of
those slots that :class:`streams.slots.GroupSlots` allows it, so groups whose jobs hang never take
every slot. An *urgent* job (live work, where the rest is replayed) is served a slot before the
waiting ones that are not. Event-loop only (not thread-safe).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from streams.slots import GroupSlots

Job = Callable[[], Awaitable[None]]


class KeyLanes:
    """One ordered lane per key, lanes in parallel; ``total`` jobs at once, shared by groups.

    A group (a destination) may hold at most 1/``share`` of the slots the other groups leave
    (:class:`GroupSlots`), so groups whose jobs hang hold a bounded part and live groups always
    find slots.
    """

    def __init__(self, total: int, share: int) -> None:
        self.slots = GroupSlots(total, share)
        self._queues: dict[str, deque[tuple[Job, bool]]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._drains = 0
        """How many drains began: a job taken off its queue before a drain, and still waiting for a
        slot when it began, is dropped like the queued ones."""

    def submit(self, key: str, group: str, job: Job, urgent: bool = False) -> None:
        self._queues.setdefault(key, deque()).append((job, urgent))
        if key not in self._tasks:
            self._tasks[key] = asyncio.create_task(self._run(key, group), name=f"lane {key}")

    async def _run(self, key: str, group: str) -> None:
        queue = self._queues[key]
        try:
            while queue:
                job, urgent = queue.popleft()
                drains = self._drains
                await self.slots.acquire(group, urgent)
                if drains != self._drains:  # drained while it waited for a slot: not started
                    self.slots.release(group)
                    continue
                try:
                    await job()
                finally:
                    self.slots.release(group)
        finally:
            del self._queues[key], self._tasks[key]

    async def drain(self) -> None:
        """Drops the jobs not started, queued or waiting for a slot (their offsets stay uncommitted),
        and waits for the running ones."""
        self._drains += 1
        for queue in self._queues.values():
            queue.clear()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
