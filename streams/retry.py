"""Records that cannot be handled *yet*: retried later without stalling the other partitions.

A processor's ``handle`` raises :class:`RetryLater` for a record that may succeed later (its writer
schema is in a schema registry that is down, say). :class:`ProcessorRuntime
<streams.processor.ProcessorRuntime>` then, with :class:`PartitionRetries`:

- rolls the record's state changes back, produces nothing for it, and handles none of the records after
  it in the same partition (their order is kept); the committed offset of that partition stays on it;
- seeks the partition back to the record and pauses it for a back-off (0.5 s, doubling, at most 30 s),
  while the other partitions go on; then resumes it, and the record is handled again;
- once ``give_up_after`` seconds have passed since the record first failed, hands it to the processor's
  ``dead_letter`` instead (with the :class:`RetryLater` as the reason): bounded, nothing lost.

The first-failure times live in memory: a worker that restarts, or a partition that moves to another
worker, starts the record's budget again (it is still bounded by each worker's budget).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import Message, TopicPartition

from streams.records import coordinates

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0


class RetryLater(Exception):
    """This record cannot be handled yet; try it again later, for at most ``give_up_after`` seconds
    from its first failure, then dead-letter it."""

    def __init__(self, reason: str, *, give_up_after: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.give_up_after = give_up_after
        self.attempts = 0
        """Set by the runtime when it gives up: how many times the record failed, over how long."""
        self.waited = 0.0


@dataclass(slots=True)
class _Failing:
    offset: int
    since: float
    attempts: int


class PartitionRetries:
    """What the runtime remembers of records being retried (see the module docstring); one thread."""

    def __init__(self) -> None:
        self._failing: dict[tuple[str, int], _Failing] = {}
        self._paused: dict[tuple[str, int], float] = {}

    def should_retry(self, msg: Message, exc: RetryLater) -> bool:
        """Whether to retry ``msg`` later (True) or dead-letter it now (False)."""
        topic, partition, offset = coordinates(msg)
        now = time.monotonic()
        failing = self._failing.get((topic, partition))
        if failing is None or failing.offset != offset:
            failing = self._failing[(topic, partition)] = _Failing(offset, now, 0)
        failing.attempts += 1
        exc.attempts, exc.waited = failing.attempts, now - failing.since
        if exc.waited >= exc.give_up_after:
            del self._failing[(topic, partition)]
            return False
        return True

    def done(self, msg: Message) -> None:
        """``msg`` was handled (or dead-lettered): its partition is not failing any more."""
        topic, partition, offset = coordinates(msg)
        failing = self._failing.get((topic, partition))
        if failing is not None and failing.offset <= offset:
            del self._failing[(topic, partition)]

    def pause(self, consumer: PausingConsumer, blocked: dict[tuple[str, int], int]) -> None:
        """Seeks each blocked partition back to its record and pauses it for its back-off."""
        now = time.monotonic()
        for (topic, partition), offset in blocked.items():
            failing = self._failing.get((topic, partition))
            attempts = failing.attempts if failing is not None else 1
            delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (attempts - 1))
            tp = TopicPartition(topic, partition, offset)
            consumer.seek(tp)
            consumer.pause([tp])
            self._paused[(topic, partition)] = now + delay

    def resume_due(self, consumer: PausingConsumer) -> None:
        """Resumes the paused partitions whose back-off is over."""
        now = time.monotonic()
        due = [key for key, until in self._paused.items() if until <= now]
        if due:
            consumer.resume([TopicPartition(topic, partition) for topic, partition in due])
            for key in due:
                del self._paused[key]

    def paused(self) -> set[tuple[str, int]]:
        """Partitions paused now, waiting to retry a record (sought back to it)."""
        return set(self._paused)

    def forget(self, partitions: list[TopicPartition]) -> None:
        """On a rebalance: assigned or revoked partitions start unpaused (their pause is gone)."""
        for tp in partitions:
            self._paused.pop((tp.topic, tp.partition), None)


class PausingConsumer(Protocol):
    """What :class:`PartitionRetries` needs of a consumer (confluent_kafka.Consumer has it)."""

    def seek(self, partition: TopicPartition) -> None: ...
    def pause(self, partitions: list[TopicPartition]) -> None: ...
    def resume(self, partitions: list[TopicPartition]) -> None: ...
