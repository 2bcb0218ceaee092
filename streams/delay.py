"""Delay topics without sleeping in a stream: pause a partition until its head record is due.

A record in a delay (retry) topic carries its due time, in the body (``due_at``) and in the header
``absync-due-at`` (epoch milliseconds), so the gate decides without decoding the body. When the poll
loop gets a record that is not due yet, :meth:`DelayGate.admit` remembers ``partition -> (due time,
offset)``; the loop pauses every gated partition, and :meth:`DelayGate.due_partitions` tells it
which ones to resume and where to seek them back. The consumer keeps polling all the time, so a
24-hour wait never trips ``max.poll.interval.ms``, and other partitions and topics are never
blocked.

Nothing lives only in memory: the due time is in the record and offsets are committed only for
processed records, so after a restart or a rebalance the head record is fetched again and gated
again. A record is never admitted before its due time.

Within one partition records are admitted in offset order; records of one retry topic share one
delay, so their due times are (almost) in order. A record held back by a later floor (Retry-After)
delays the ones behind it in the same partition; it never makes anything early.

The gate is not thread-safe: it belongs to the thread that polls the consumer.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable

import structlog
from confluent_kafka import Message

from streams.records import coordinates, header

log = structlog.get_logger(__name__)

DUE_AT_HEADER = "absync-due-at"
RESEEK_MS = 500
"""A rewinding partition whose head has not come back after this long is sought again."""

Partition = tuple[str, int]


def due_at_header(due_at: dt.datetime) -> tuple[str, bytes]:
    """The header to put on a record produced to a delay topic."""
    return DUE_AT_HEADER, str(int(due_at.timestamp() * 1000)).encode()


def header_due_ms(msg: Message) -> int | None:
    """The record's due time (epoch ms) from its header, or None when it has none."""
    value = header(msg, DUE_AT_HEADER)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def now_ms() -> int:
    """The wall clock in epoch milliseconds (the gate's default clock)."""
    return int(time.time() * 1000)


class DelayGate:
    """Holds back the records of delay topics until they are due (see the module docstring).

    A partition is *gated* from the moment its head record is found not due until that record is
    due; then it is *rewinding* until the head record comes back: the poll loop resumes it and seeks
    it to the head (:meth:`due_partitions` says where), again every ``RESEEK_MS`` or as soon as
    another record of it arrives (refused), until the head is back. The gate never relies on the
    consumer's position of a delay partition.

    ``fallback_due_ms`` reads the due time from the record body when a record lacks the header.
    ``clock`` gives the time in epoch milliseconds, the unit of the due times; every decision reads
    it (the wall clock unless a test injects another).
    """

    def __init__(
        self,
        topics: Iterable[str],
        fallback_due_ms: Callable[[Message], int],
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._topics = frozenset(topics)
        self._fallback = fallback_due_ms
        self._clock = clock
        self._gated: dict[Partition, tuple[int, int]] = {}
        """partition -> (due time in epoch ms, offset of the head record)"""
        self._rewinding: dict[Partition, tuple[int, int]] = {}
        """partition -> (offset of the head record, when to seek again if it is not back by then)"""

    @property
    def gated(self) -> frozenset[Partition]:
        """Partitions held back now (the poll loop keeps them paused)."""
        return frozenset(self._gated)

    def admit(self, msg: Message) -> bool:
        """True when the record may be processed now; else its partition is gated at this record.

        Records of a gated partition, and of a rewinding one other than its head, are refused: they
        were fetched before the rewind and will be fetched again after it.
        """
        topic, number, offset = coordinates(msg)
        if topic not in self._topics:
            return True
        partition: Partition = (topic, number)
        if partition in self._gated:
            return False
        if partition in self._rewinding:
            head, _ = self._rewinding[partition]
            if offset != head:
                self._rewinding[partition] = (head, 0)  # seek again at once
                return False
            del self._rewinding[partition]
        due = header_due_ms(msg)
        if due is None:
            due = self._fallback(msg)
        if due <= self._clock():
            return True
        self._gated[partition] = (due, offset)
        log.debug("delay partition gated", topic=topic, partition=number, offset=offset, due_ms=due)
        return False

    def due_partitions(self) -> dict[Partition, int]:
        """Partitions to seek to their head now, with the head's offset: gated ones whose head is due
        (resume them first), and rewinding ones whose head has not come back (the consumer's own
        repositioning on resume may land after our seek, or another record came instead)."""
        now = self._clock()
        due = {p: offset for p, (at, offset) in self._gated.items() if at <= now}
        for partition in due:
            del self._gated[partition]
        for partition, (offset, again_at) in self._rewinding.items():
            if again_at <= now:
                due[partition] = offset
        self._rewinding.update({p: (offset, now + RESEEK_MS) for p, offset in due.items()})
        return due

    def seconds_to_next(self, default: float) -> float:
        """How long the poll loop may block before a gated partition becomes due."""
        if not self._gated:
            return default
        first = min(at for at, _ in self._gated.values())
        return max(0.0, min(default, (first - self._clock()) / 1000))

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Partitions revoked: their gate is rebuilt from the records by whoever gets them next."""
        for partition in partitions:
            self._gated.pop(partition, None)
            self._rewinding.pop(partition, None)
