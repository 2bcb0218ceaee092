"""Changelog-backed key-value stores: per input partition, a map of ``str`` to ``bytes``, in memory or
on disk (``ABSYNC_STATE_BACKEND``, :mod:`streams.state_backend`).

The changelog is a compacted topic with the same partition count as the input: the state of input
partition *p* lives in changelog partition *p*. Both stores share:

- ``restore(partitions)`` (on assignment) reads those changelog partitions to their high watermark,
  read_committed, so only committed state comes back;
- ``drop(partitions)`` (on revocation) forgets them: their new owner restores them;
- ``get``/``items``/``partitions`` read what is held here. A partition that is not restored here
  raises ``KeyError``.

Values are small bytes (JSON is fine); keys are strings. ``put`` refuses a record larger than
``ABSYNC_MAX_RECORD_BYTES`` (:class:`StateTooLarge`, a ValueError, nothing changed): raised while a
record is handled, it fails that record only, instead of a changelog write that Kafka would refuse.

Two ways to write:

- :class:`StateStore`, for processors run by :mod:`streams.processor`: ``put``/``delete`` change the
  dict and queue a changelog record, which the runtime produces in the same transaction as the
  outputs (state and outputs commit together or not at all); the runtime rolls back the in-memory
  changes of a record that failed, or of an aborted transaction (an undo log, cleared at each commit).
- :class:`DirectStore`, for a processor outside any transaction (the delivery worker): ``put`` writes
  the changelog record itself and returns once Kafka acknowledged it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import structlog
from confluent_kafka import KafkaException, Message

from streams.async_producer import AsyncProducer
from streams.deadletter import record_size
from streams.kafka import read_compacted
from streams.processor import Output
from streams.settings import Settings
from streams.state_backend import PartitionMap, open_map

log = structlog.get_logger(__name__)

_ABSENT = object()


class StateRestoreError(Exception):
    """A changelog partition could not be read to its end."""


class StateTooLarge(ValueError):
    """A state value whose changelog record would be larger than ``ABSYNC_MAX_RECORD_BYTES``."""


class ChangelogState:
    """The part both stores share: the partitions in memory, restored from and dropped to the changelog.

    ``restore`` and ``drop`` replace or remove a partition's whole dict in one step, so they may run
    in another thread than the readers and writers (a consumer's rebalance callbacks): a reader sees
    a partition whole or not at all.
    """

    def __init__(self, settings: Settings, changelog_topic: str, *, restore_timeout: float = 120.0) -> None:
        self._settings = settings
        self.topic = changelog_topic
        self._restore_timeout = restore_timeout
        self._data: dict[int, PartitionMap] = {}

    # -- reading ------------------------------------------------------------------------------
    def get(self, partition: int, key: str) -> bytes | None:
        return self._partition(partition).get(key)

    def items(self, partition: int) -> Iterator[tuple[str, bytes]]:
        """One partition's entries, safe to put/delete while iterating: a snapshot in memory; on disk,
        read in chunks (an entry put meanwhile may or may not be seen; see streams/state_backend.py)."""
        return self._partition(partition).items()

    def partitions(self) -> list[int]:
        """The partitions held (restored and not dropped)."""
        return sorted(self._data)

    # -- assignment ---------------------------------------------------------------------------
    def restore(self, partitions: Iterable[int]) -> None:
        """Loads these partitions from the changelog (read_committed, up to the high watermark)."""
        wanted = [p for p in partitions if p not in self._data]
        if not wanted:
            return
        started = time.monotonic()
        loaded = {p: self._read_with_retries(p) for p in wanted}
        self._data.update(loaded)
        log.info(
            "state restored",
            topic=self.topic,
            keys={p: len(v) for p, v in loaded.items()},
            seconds=round(time.monotonic() - started, 3),
        )

    def drop(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            gone = self._data.pop(p, None)
            if gone is not None:
                gone.close()

    # -- internals ----------------------------------------------------------------------------
    def _partition(self, partition: int) -> PartitionMap:
        try:
            return self._data[partition]
        except KeyError:
            raise KeyError(f"partition {partition} of {self.topic} is not restored here") from None

    def _check_size(self, key: str, value: bytes) -> None:
        size = record_size(key.encode(), value, [])
        if size > self._settings.max_record_bytes:
            raise StateTooLarge(
                f"state of {key[:200]!r} would be a {size}-byte record in {self.topic}, more than "
                f"ABSYNC_MAX_RECORD_BYTES ({self._settings.max_record_bytes})"
            )

    def _read_with_retries(self, partition: int) -> PartitionMap:
        """Reads one changelog partition, again after a transient Kafka error (a leader moving after
        a broker failure), until ``restore_timeout``."""
        deadline = time.monotonic() + self._restore_timeout
        while True:
            try:
                return self._read(partition)
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise StateRestoreError(f"{self.topic}[{partition}] could not be read: {exc}") from exc
                log.warning(
                    "changelog read failed, retrying", topic=self.topic, partition=partition, error=str(exc)
                )
                time.sleep(1.0)

    def _read(self, partition: int) -> PartitionMap:
        data = open_map(self._settings.state_backend, self._settings.data_dir, self.topic, partition)

        def apply(msg: Message) -> None:
            key = (msg.key() or b"").decode(errors="replace")  # never ends the restore
            value = msg.value()
            if value is None:
                data.pop(key)
            else:
                data.set(key, value)

        try:
            read_compacted(
                self._settings, self.topic, apply, partitions=[partition], timeout=self._restore_timeout
            )
        except TimeoutError as exc:
            data.close()
            raise StateRestoreError(str(exc)) from None
        except BaseException:
            data.close()
            raise
        data.finish_load()
        return data


class StateStore(ChangelogState):
    """A store written inside the transactions of :mod:`streams.processor` (see the module docstring).

    Not thread-safe: the runtime's thread reads, writes, restores and drops.
    """

    def __init__(self, settings: Settings, changelog_topic: str, *, restore_timeout: float = 120.0) -> None:
        super().__init__(settings, changelog_topic, restore_timeout=restore_timeout)
        self._writes: list[Output] = []
        self._undo: list[tuple[int, str, object]] = []

    # -- the processor's API ------------------------------------------------------------------
    def put(self, partition: int, key: str, value: bytes) -> None:
        self._check_size(key, value)
        self._write(partition, key, value)

    def delete(self, partition: int, key: str) -> None:
        if key in self._partition(partition):
            self._write(partition, key, None)

    # -- the runtime's API --------------------------------------------------------------------
    def savepoint(self) -> int:
        return len(self._undo)

    def rollback(self, savepoint: int = 0) -> None:
        """Undoes the changes made after ``savepoint`` (0: everything since the last commit)."""
        while len(self._undo) > savepoint:
            partition, key, old = self._undo.pop()
            data = self._partition(partition)
            if old is _ABSENT:
                data.pop(key)
            else:
                assert isinstance(old, bytes)
                data.set(key, old)
        del self._writes[savepoint:]

    def take_writes(self) -> list[Output]:
        """The changelog records of the current transaction (the runtime produces them, once)."""
        return list(self._writes)

    def commit(self) -> None:
        """The transaction committed: the undo log is no longer needed."""
        self._undo.clear()
        self._writes.clear()

    def _write(self, partition: int, key: str, value: bytes | None) -> None:
        data = self._partition(partition)
        old = data.get(key)
        self._undo.append((partition, key, _ABSENT if old is None else old))
        if value is None:
            data.pop(key)
        else:
            data.set(key, value)
        self._writes.append(Output(self.topic, key.encode(), value, partition=partition))


class DirectStore(ChangelogState):
    """A store written outside any transaction: each ``put`` is its own changelog write, awaited.

    Contract:

    - ``await put(partition, key, value, producer=...)`` returns once Kafka acknowledged the
      changelog record (``acks=all``, idempotent producer): from then on a restore, here or on the
      partition's next owner, sees the value (or a later one);
    - the value is held here from the call on, before the acknowledgement: a ``get`` of the same key
      sees it at once. The caller orders its own work per key (the delivery worker runs one key's
      records one after the other), so nothing acts on a value that might still be lost, except
      what the caller awaits next;
    - a value too large for the changelog raises :class:`StateTooLarge` and changes nothing;
    - when Kafka refuses the record, ``put`` raises :class:`streams.async_producer.ProduceError` and
      memory is ahead of the changelog: the caller must stop using this partition (the delivery
      worker stops; its successor restores the partition from the changelog);
    - there is no rollback: a value put stays put.

    ``get`` and ``put`` run in the event loop's thread (the producer's); ``restore`` and ``drop`` may
    run in the consumer's thread (see :class:`ChangelogState`). The caller must not put to a
    partition while it is being dropped (the delivery worker drains its lanes first).
    """

    async def put(self, partition: int, key: str, value: bytes, *, producer: AsyncProducer) -> None:
        self._check_size(key, value)
        self._partition(partition).set(key, value)
        await producer.send(self.topic, key, value, partition=partition)
