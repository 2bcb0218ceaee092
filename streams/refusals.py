"""Outputs the broker refuses for what they are, and how the runtime gets past them.

A topic whose ``max.message.bytes`` is below ``ABSYNC_MAX_RECORD_BYTES``, or a broker policy, refuses
a record on every attempt (:data:`REFUSALS`). :class:`Refusals` is the exactly-once runtime's
(:mod:`streams.processor`) bookkeeping of them: a delivery report per output notes a refusal against
the input record it came from; after an abort, :meth:`Refusals.after_abort` counts them and has the
records of the failed batch processed one per transaction (:attr:`Refusals.isolating`), so a refused
message set no longer takes innocent neighbours with it and the next refusal names its record
alone; :meth:`Refusals.verdict` says when a record is to be dead-lettered (refused
:data:`REFUSED_ATTEMPTS` times) or skipped (its dead letter refused too). Used by one thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum

import structlog
from confluent_kafka import KafkaError, Message

from streams.records import coordinates

log = structlog.get_logger(__name__)

Coordinates = tuple[str, int, int]

REFUSALS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.POLICY_VIOLATION,
    }
)
"""Delivery errors by which the broker refuses a record for what it is: sending it again will not help."""

REFUSED_ATTEMPTS = 3
"""Transactions a record's outputs may be refused in (:data:`REFUSALS`) before it is dead-lettered."""


class OutputRefused(Exception):
    """The broker refused an output of a record :data:`REFUSED_ATTEMPTS` times: the record is
    dead-lettered."""


class Verdict(Enum):
    HANDLE = "handle"
    DEAD_LETTER = "dead-letter"
    SKIP = "skip"
    """Its dead letter was refused too."""


class Refusals:
    def __init__(self) -> None:
        self._refused: dict[Coordinates, tuple[int, str]] = {}
        """Records whose outputs the broker refused -> (times, last error); dropped once handled."""
        self._reported: list[tuple[Coordinates, KafkaError]] = []
        """Refusals reported since the last commit or abort (a report that arrives after its
        transaction's abort is counted at the next one: the retried record is refused again)."""
        self._isolate = 0
        """Records still to process one per transaction, after a batch was refused."""

    @property
    def isolating(self) -> bool:
        return self._isolate > 0

    def reporter(self, source: Coordinates) -> Callable[[KafkaError | None, Message], None]:
        """The delivery report callback for the outputs of the record at ``source``."""
        reported = self._reported

        def report(error: KafkaError | None, _msg: Message) -> None:
            if error is not None and error.code() in REFUSALS:
                reported.append((source, error))

        return report

    def after_abort(self, batch_size: int, bound: structlog.typing.FilteringBoundLogger) -> None:
        """Counts the records whose outputs were refused; if any, the next ``batch_size`` records
        are processed one per transaction."""
        reported = dict(self._reported)
        self._reported.clear()
        for source, error in reported.items():
            times = self._refused.get(source, (0, ""))[0] + 1
            self._refused[source] = (times, error.str())
            topic, partition, offset = source
            bound.error(
                "the broker refused an output of a record",
                topic=topic,
                partition=partition,
                offset=offset,
                times=times,
                error=error.str(),
            )
        if reported:
            self._isolate = max(self._isolate, batch_size)

    def after_commit(self, handled: Sequence[Message]) -> None:
        """The ``handled`` records were committed: their refusals are forgotten."""
        self._reported.clear()
        if self._isolate:
            self._isolate = max(0, self._isolate - len(handled))
        if self._refused:
            for msg in handled:
                self._refused.pop(coordinates(msg), None)

    def verdict(self, msg: Message) -> tuple[Verdict, str]:
        """What to do with ``msg`` now, and the broker's last error for it."""
        if not self._refused:
            return Verdict.HANDLE, ""
        times, error = self._refused.get(coordinates(msg), (0, ""))
        if times > REFUSED_ATTEMPTS:
            return Verdict.SKIP, error
        if times == REFUSED_ATTEMPTS:
            return Verdict.DEAD_LETTER, f"the broker refused an output of this record {times} times: {error}"
        return Verdict.HANDLE, ""

    def forget(self) -> None:
        """On a new assignment: the records may be another worker's now."""
        self._refused.clear()
