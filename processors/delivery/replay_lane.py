"""The replay lane of the delivery worker: :class:`ReplayLane`.

Replayed work (a resync's deliveries, the RETRY commands of Recover / ``absync replay-failed``) is
written to ``deliveries.replay``, not to ``deliveries``: a resync of a million absences would
otherwise queue in front of every live change of the same partitions. The worker's one consumer reads
both, but the replay partitions only while live work leaves room:

- **live first**: the lane *closes* while the live records in flight (``deliveries``, ``commands``
  and the due retries, admitted and not finished) are more than ``live_room`` (a quarter of the
  concurrency slots); it reopens when they are back to that. Live records are never held back by it.
  Lag on a live partition shows as live records in flight: the worker admits them at once, up to its
  intake bound.
- **bounded**: at most ``budget`` (as many as the concurrency slots) replay records are in flight at
  once; past it the lane closes until half of those are done (hysteresis: it does not flap on every
  record, and the half still queued keeps the slots busy while the partitions are fetched again).
  A live record is served a slot before every replayed one waiting (``GroupSlots`` urgent waiters),
  so a live change to a destination being resynced waits for the first of its slots to free, where
  before it waited behind the whole backlog of its partition (up to the intake bound, 50 records a
  slot); and one destination, replayed or not, still holds at most its share of the slots
  (:class:`streams.slots.GroupSlots`), so a hanging replayed destination leaves half of them.
- **nothing lost, nothing early**: a replay record read while the lane is closed (already fetched
  when the partition was paused, or past the budget within a batch) is not handed out: its partition
  is paused and, when the lane reopens, sought back to that record (the same rewind as the delay
  gate's, :class:`streams.delay.DelayGate`). Its offset is never committed past it: the worker commits
  the consumer's position only for a partition without a rewind pending.

Why pause/resume on the worker's one consumer rather than a second consumer: a second consumer in
the same group would get the replay partitions in a separate assignment (the ``range`` assignor
co-partitions only the topics one member subscribes to), so partition *p* of ``deliveries.replay``
could land on another worker than partition *p* of ``deliveries``: two workers holding one key's
state, and per-key order lost. One consumer keeps every topic of a key on one worker, and the poll
thread already owns pauses, rewinds and commits.

Retries of replayed records use the normal delay topics (``deliveries.retry-*``), and the per
destination rate limit applies in the key's lane as for live work
(:mod:`processors.delivery.rate_limit`). Order between a key's live and replayed deliveries:
:func:`processors.delivery.state.admit`. Poll-thread only (not thread-safe).
"""

from __future__ import annotations

from streams.delay import Partition

LIVE_ROOM = 4
"""The lane is open while the live records in flight are at most 1/LIVE_ROOM of the slots."""
REPLAY_PER_SLOT = 1
"""At most REPLAY_PER_SLOT replay records in flight per concurrency slot. Half a slot's worth (32 of
64) cost the resync about a third of its rate in bench.resync (the slots idle while the partitions
were fetched again after each refill)."""


class ReplayLane:
    """Decides, once per poll round, whether the replay partitions may run (see the module docstring)."""

    def __init__(self, topic: str, concurrency: int) -> None:
        self.topic = topic
        self.live_room = max(1, concurrency // LIVE_ROOM)
        self.budget = max(1, concurrency * REPLAY_PER_SLOT)
        self.open = True
        self._replay_in_flight = 0
        self._full = False

    def is_replay(self, partition: Partition) -> bool:
        return partition[0] == self.topic

    def update(self, live_in_flight: int, replay_in_flight: int) -> bool:
        """Opens or closes the lane for this round from the records in flight; returns ``open``."""
        self._full = replay_in_flight >= self.budget or (self._full and replay_in_flight > self.budget // 2)
        self.open = live_in_flight <= self.live_room and not self._full
        self._replay_in_flight = replay_in_flight
        return self.open

    def paused(self, assigned: set[Partition]) -> set[Partition]:
        """The replay partitions to keep paused this round (all of them while the lane is closed)."""
        return set() if self.open else {p for p in assigned if self.is_replay(p)}

    def take(self) -> bool:
        """Whether one more replay record may be handed out now (counts it if so)."""
        if not self.open or self._replay_in_flight >= self.budget:
            return False
        self._replay_in_flight += 1
        return True
