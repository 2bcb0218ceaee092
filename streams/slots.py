"""Concurrency slots shared by groups (destinations) so that stuck groups always leave some to the rest.

A fixed share per group (say half of the slots each) does not hold once two groups are stuck: two
destinations hanging until their timeout filled all 64 slots of the delivery worker, and every live
destination waited for their timeouts (issue 12, item 3). :class:`GroupSlots` instead lets a group
hold at most ``1/share`` of the slots *the other groups leave* (at least one):

- one stuck group alone holds at most ``total / share``;
- each further stuck group holds at most ``1/share`` of what the others left, so k stuck groups
  leave at least ``total / share**k`` slots to the live ones (with 64 slots and ``share = 2``, two
  stuck destinations leave 16 or more, three leave 8 or more);
- a group's limit is checked when it takes a slot, never by taking slots back.

Waiting groups are served round-robin, one slot per group per round, in arrival order within a
group; *urgent* waiters (live work, where the rest is replayed work: a resync) come first, within
their group and across groups, so a live change to a destination being resynced waits for the first
of its slots to free rather than for every replayed attempt queued before it. Urgency never lifts a
group's limit. Event-loop only (not thread-safe).
"""

from __future__ import annotations

import asyncio
from collections import deque


class GroupSlots:
    """``total`` slots; a group may hold at most ``(total - held by others) // share`` (min 1)."""

    def __init__(self, total: int, share: int = 2) -> None:
        if total < 1 or share < 1:
            raise ValueError("GroupSlots needs at least one slot and a share of at least 1")
        self.total = total
        self.share = share
        self._used = 0
        self._held: dict[str, int] = {}
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}
        self._urgent: dict[str, deque[asyncio.Future[None]]] = {}

    def held(self, group: str) -> int:
        return self._held.get(group, 0)

    @property
    def used(self) -> int:
        return self._used

    def limit(self, group: str) -> int:
        """How many slots ``group`` may hold now."""
        others = self._used - self.held(group)
        return max(1, (self.total - others) // self.share)

    async def acquire(self, group: str, urgent: bool = False) -> None:
        """Waits until ``group`` may take a slot, and takes it; ``urgent`` waiters are served first."""
        queues = self._urgent if urgent else self._waiters
        ahead = self._urgent.get(group) or (not urgent and self._waiters.get(group))
        if not ahead and self._may_take(group):
            self._take(group)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queues.setdefault(group, deque()).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(group)  # granted as it was cancelled: give it back
            else:
                queue = queues.get(group)
                if queue is not None and waiter in queue:
                    queue.remove(waiter)
                    if not queue:
                        del queues[group]
            raise

    def release(self, group: str) -> None:
        held = self._held[group] - 1
        if held:
            self._held[group] = held
        else:
            del self._held[group]
        self._used -= 1
        self._grant()

    def _may_take(self, group: str) -> bool:
        return self._used < self.total and self.held(group) < self.limit(group)

    def _take(self, group: str) -> None:
        self._held[group] = self.held(group) + 1
        self._used += 1

    def _grant(self) -> None:
        """Hands free slots to waiting groups, urgent waiters first, one per group per round, while
        any may take one."""
        for queues in (self._urgent, self._waiters):
            granted = True
            while granted and self._used < self.total and queues:
                granted = False
                for group in list(queues):
                    queue = queues[group]
                    while queue and queue[0].done():  # cancelled while waiting
                        queue.popleft()
                    if queue and self._may_take(group):
                        self._take(group)
                        queue.popleft().set_result(None)
                        granted = True
                    if not queue:
                        del queues[group]
