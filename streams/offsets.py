"""What a consumer that finishes records out of order may commit: :class:`OffsetTracker`.

A consumer that hands records to parallel workers (the delivery worker's key lanes) finishes them in
any order. Committing the offset of a finished record while an earlier one of its partition is still
running would lose that earlier record on a crash. The tracker gives, per partition, the lowest
offset not done yet: committing it re-delivers after a crash only what was not finished (and maybe
some finished records after it: at-least-once).
"""

from __future__ import annotations

import threading

from streams.delay import Partition


class OffsetTracker:
    """Per partition: the offsets handed out and not done yet. Thread-safe (poll thread + loop).

    The committable offset of a partition is the lowest offset not done, or one past the last
    offset handed out when all are done. It never passes a record that was handed out and not done.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Partition, set[int]] = {}
        self._next: dict[Partition, int] = {}

    def started(self, partition: Partition, offset: int) -> None:
        with self._lock:
            self._pending.setdefault(partition, set()).add(offset)
            self._next[partition] = offset + 1

    def done(self, partition: Partition, offset: int) -> None:
        with self._lock:
            self._pending.get(partition, set()).discard(offset)

    def in_flight(self, topic: str | None = None) -> int:
        """Records handed out and not done: of every partition, or of ``topic``'s."""
        with self._lock:
            return sum(len(v) for p, v in self._pending.items() if topic is None or p[0] == topic)

    def idle(self, partitions: set[Partition]) -> set[Partition]:
        """Partitions with records handed out and none of them pending."""
        with self._lock:
            return {p for p in partitions if p in self._next and not self._pending.get(p)}

    def committable(
        self, partitions: set[Partition], positions: dict[Partition, int]
    ) -> dict[Partition, int]:
        """``positions``: the consumer's positions of idle partitions, which are past transaction
        markers (committing them leaves no phantom lag of one on transactional topics)."""
        with self._lock:
            return {
                p: min(self._pending[p]) if self._pending.get(p) else max(self._next[p], positions.get(p, 0))
                for p in partitions
                if p in self._next
            }

    def forget(self, partitions: set[Partition]) -> None:
        with self._lock:
            for p in partitions:
                self._pending.pop(p, None)
                self._next.pop(p, None)
