"""The exactly-once consume-transform-produce runtime shared by absync's processors.

One :class:`ProcessorRuntime` runs one :class:`Processor` in a thread:

1. poll a batch (up to ``batch_size`` records or ``batch_timeout`` seconds) with a read_committed
   consumer (no auto-commit, ``range`` assignor: see :mod:`streams.kafka`);
2. call ``processor.handle(msg)`` for each record and produce its outputs at once, inside a Kafka
   transaction; an exception from one record never stops the loop: its state changes are rolled back
   and ``processor.dead_letter(msg, exc)`` says what to produce instead; a record that cannot be
   handled *yet* (``handle`` raised :class:`streams.retry.RetryLater`) pauses its partition and is
   retried with back-off, then dead-lettered (see :mod:`streams.retry`), the other partitions going on.
   No output is ever larger than ``ABSYNC_MAX_RECORD_BYTES``: a record with a larger output is
   dead-lettered instead, and a dead-letter copy too large to write is truncated
   (:mod:`streams.deadletter`);
   Records of the processor's ``background_topics`` (bulk work: the fan-out's resync requests) wait
   for the others: in a batch they are handled after every other record, at most
   ``BACKGROUND_PER_BATCH`` of them; the rest are fetched again for a later batch: every background
   partition is sought back (to its first record left, or to its position), which drops what was
   fetched ahead of it, so a live record waits for about one batch, not behind a backlog of bulk
   ones in the consumer's queue. Such a processor's consumer prefetches little
   (``streams.kafka.BOUNDED_PREFETCH``);
3. still in the transaction: ``processor.punctuate()`` outputs (work no record triggers), the state
   stores' changelog writes and the input offsets (``send_offsets_to_transaction`` with the consumer
   group metadata); commit.

So outputs, state and progress commit together or not at all. On an abortable error the transaction
is aborted, the in-memory state rolled back and the consumer sought back to the batch's first offsets:
the batch is processed again after ``retry_backoff``.

An output the broker itself refuses (a topic whose ``max.message.bytes`` is below
``ABSYNC_MAX_RECORD_BYTES``, a broker policy: :data:`REFUSALS`) would fail the batch on every
attempt. So after such a refusal the records of the failed batch are processed one per transaction
(a refused record no longer takes its neighbours down with it, nor a refused message set its
records), and a record whose outputs were refused :data:`REFUSED_ATTEMPTS` times is dead-lettered
(:class:`OutputRefused`); if its dead letter is refused too, it is skipped with an error log naming
its coordinates (it stays in its topic). No record stalls the processor (:mod:`streams.refusals`).

A fatal error (e.g. fenced by another worker with the same id) raises: the component stops and
``absync run`` exits non-zero.

A :class:`StallWatchdog` ends the process when the loop stops making progress for
``ABSYNC_STALL_TIMEOUT`` seconds: librdkafka can block inside ``send_offsets_to_transaction`` past its
timeout after a broker restart (confluentinc/librdkafka#5456, seen in tests/faults). A blocked C call
cannot be interrupted from Python, so the process exits and its supervisor restarts it; the restarted
worker, with the same id, fences and aborts the stuck transaction.

The transactional id is stable per worker (``<group>-<worker id>``): a restarted worker fences its
killed predecessor and aborts its open transaction at once (instead of read_committed readers waiting
for the transaction timeout). Zombies of an older group generation are fenced by the consumer group
metadata (KIP-447), so workers with different ids never commit twice for one partition.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streams.deadletter import as_headers, dead_letter_copy, output_size
from streams.kafka import BOUNDED_PREFETCH, group_id, make_consumer, make_transactional_producer, produce
from streams.output import Headers, Output
from streams.records import coordinates
from streams.refusals import REFUSALS, REFUSED_ATTEMPTS, OutputRefused, Refusals, Verdict
from streams.retry import PartitionRetries, RetryLater
from streams.settings import Settings
from streams.threads import run_in_thread
from streams.watchdog import StallWatchdog

log = structlog.get_logger(__name__)

__all__ = [
    "REFUSALS",
    "REFUSED_ATTEMPTS",
    "Headers",
    "Output",
    "OutputRefused",
    "OutputTooLarge",
    "Processor",
    "ProcessorComponent",
    "ProcessorRuntime",
    "StallWatchdog",
]


BACKGROUND_PER_BATCH = 100
"""Records of a processor's ``background_topics`` handled per batch at most (one transaction)."""


class OutputTooLarge(Exception):
    """An output of a record is larger than ``ABSYNC_MAX_RECORD_BYTES``: the record is dead-lettered."""


class TransactionalStore(Protocol):
    """What the runtime needs of a state store (see :class:`streams.state.StateStore`)."""

    def restore(self, partitions: Iterable[int]) -> None: ...
    def drop(self, partitions: Iterable[int]) -> None: ...
    def savepoint(self) -> int: ...
    def rollback(self, savepoint: int = 0) -> None: ...
    def take_writes(self) -> list[Output]: ...
    def commit(self) -> None: ...


class Processor:
    """Base class of a processor: override :meth:`handle`, the rest has safe defaults.

    Every hook runs in the runtime's thread, so a processor needs no locks for its own state.
    """

    name: str = "processor"
    """Logical name: the consumer group and the transactional id derive from it."""
    topics: Sequence[str] = ()
    background_topics: Sequence[str] = ()
    """Those of ``topics`` whose records wait for the others (see the module docstring)."""
    stores: Sequence[TransactionalStore] = ()
    """Stores restored on assignment, dropped on revocation, written in the transaction."""

    def open(self) -> None:
        """Called once before subscribing (wait for what the processor needs, e.g. a table)."""

    def close(self) -> None:
        """Called once after the loop ends."""

    def handle(self, msg: Message) -> list[Output]:
        raise NotImplementedError

    def dead_letter(self, msg: Message, exc: Exception) -> list[Output]:
        """Outputs replacing a record whose handling raised; the default logs and skips it."""
        log.error(
            "record skipped after an error",
            processor=self.name,
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
            error=repr(exc),
        )
        return []

    def punctuate(self) -> list[Output]:
        """Called once per loop, in the transaction: work that no input record triggers."""
        return []

    def on_assign(self, partitions: list[TopicPartition]) -> None:
        """Called after the stores restored the newly assigned partitions."""

    def on_revoke(self, partitions: list[TopicPartition]) -> None:
        """Called before the stores drop the revoked partitions."""


def default_worker_id() -> str:
    """A worker id stable across restarts of the same worker: ``ABSYNC_WORKER_ID``, else the host name.

    Two workers of one processor on one host need distinct ids (they would fence each other).
    """
    return os.environ.get("ABSYNC_WORKER_ID") or socket.gethostname()


class ProcessorRuntime:
    """Runs one processor in the calling thread until ``stop`` is set (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        processor: Processor,
        *,
        worker_id: str | None = None,
        batch_size: int = 500,
        batch_timeout: float = 0.2,
        retry_backoff: float = 1.0,
        on_stall: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._on_stall = on_stall
        self._processor = processor
        self._group = group_id(settings, processor.name)
        self._transactional_id = f"{self._group}-{worker_id or default_worker_id()}"
        self._batch_size = batch_size
        self._batch_timeout = batch_timeout
        self._retry_backoff = retry_backoff
        self._log = log.bind(processor=processor.name, transactional_id=self._transactional_id)
        self._retries = PartitionRetries()
        self._refusals = Refusals()

    def run(self, stop: threading.Event) -> None:
        processor = self._processor
        processor.open()
        producer = make_transactional_producer(self._settings, self._transactional_id)
        # A processor with background topics fetches little ahead (see the module docstring); the
        # others keep librdkafka's defaults.
        bounded = BOUNDED_PREFETCH if processor.background_topics else {}
        consumer = make_consumer(self._settings, self._group, **bounded)
        watchdog = StallWatchdog(processor.name, self._settings.stall_timeout, self._on_stall).start()
        try:
            consumer.subscribe(list(processor.topics), on_assign=self._on_assign, on_revoke=self._on_revoke)
            self._log.info("processor started", topics=list(processor.topics))
            while not stop.is_set():
                self._retries.resume_due(consumer)
                # Wait for one record, then take what is already there: consume(n, timeout) would
                # wait the whole timeout for n records and add that wait to every event's latency.
                first = consumer.consume(1, self._batch_timeout)
                more = (
                    consumer.consume(self._batch_size - 1, 0)
                    if first and not self._refusals.isolating
                    else []
                )
                batch, deferred = self._prioritised([m for m in first + more if self._usable(m)])
                if not self._process(batch, consumer, producer, deferred):
                    stop.wait(self._retry_backoff)
                watchdog.beat()
        finally:
            watchdog.stop()
            consumer.close()
            producer.flush(10)
            processor.close()
            self._log.info("processor stopped")

    # -- one batch, one transaction -----------------------------------------------------------
    def _prioritised(self, records: list[Message]) -> tuple[list[Message], list[Message]]:
        """(the batch: every record of the other topics, then at most BACKGROUND_PER_BATCH of the
        background topics; the background records left for a later batch), order per partition kept."""
        background = self._processor.background_topics
        if not background:
            return records, []
        live = [m for m in records if m.topic() not in background]
        bulk = [m for m in records if m.topic() in background]
        if len(bulk) <= BACKGROUND_PER_BATCH:
            return live + bulk, []
        # The first records consumed are taken: a prefix of each partition's; the rest is deferred.
        return live + bulk[:BACKGROUND_PER_BATCH], bulk[BACKGROUND_PER_BATCH:]

    def _process(
        self, batch: list[Message], consumer: Consumer, producer: Producer, deferred: list[Message]
    ) -> bool:
        """One transaction: outputs are produced as records are handled (a worker killed mid-batch
        leaves an open transaction, aborted when it restarts), then state writes, offsets, commit.
        ``deferred``: records consumed but left for a later batch (sought back to, unless their
        partition is sought back further already).

        Returns False when the transaction was aborted (the batch will be polled again).
        """
        in_transaction = False
        handled: list[Message] = []
        blocked: dict[tuple[str, int], int] = {}
        """Partitions with a record to retry later -> its offset (nothing after it is handled)."""

        def emit(outputs: list[Output], source: tuple[str, int, int] | None = None) -> None:
            nonlocal in_transaction
            if outputs and not in_transaction:
                producer.begin_transaction()
                in_transaction = True
            report = None if source is None else self._refusals.reporter(source)
            for out in outputs:
                self._produce(producer, out, report)

        try:
            for msg in batch:
                topic, partition, offset = coordinates(msg)
                if (topic, partition) in blocked:
                    continue
                outputs = self._handle_one(msg)
                if outputs is None:
                    blocked[(topic, partition)] = offset
                    continue
                handled.append(msg)
                emit(outputs, (topic, partition, offset))
            emit(self._processor.punctuate())
            for store in self._processor.stores:
                emit(store.take_writes())
            if not in_transaction:
                if not handled:
                    self._retries.pause(consumer, blocked)
                    self._defer(consumer, deferred, set(blocked))
                    return True
                producer.begin_transaction()  # records without any output: their offsets still commit
            if handled:
                producer.send_offsets_to_transaction(
                    _next_offsets(handled), consumer.consumer_group_metadata(), 30
                )
            producer.commit_transaction(30)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            # _STATE: a produce refused because an earlier output of this transaction failed (the
            # broker refused it) and the transaction must be aborted; commit would say so too.
            refused = in_transaction and error.code() == KafkaError._STATE
            if error.fatal() or not (error.txn_requires_abort() or error.retriable() or refused):
                raise
            self._log.warning("transaction aborted, batch will be processed again", error=str(error))
            producer.poll(0)  # serves the delivery reports that name the refused outputs, if any
            self._refusals.after_abort(len(batch), self._log)
            producer.abort_transaction(30)
            for store in self._processor.stores:
                store.rollback()
            rewound = _first_offsets(batch)
            for tp in rewound:
                consumer.seek(tp)
            self._defer(consumer, deferred, {(tp.topic, tp.partition) for tp in rewound})
            return False
        for store in self._processor.stores:
            store.commit()
        self._refusals.after_commit(handled)
        self._retries.pause(consumer, blocked)
        self._defer(consumer, deferred, set(blocked))
        return True

    def _defer(self, consumer: Consumer, deferred: list[Message], skip: set[tuple[str, int]]) -> None:
        """Leaves ``deferred`` (and whatever else of the background topics was fetched ahead) for
        later batches: each assigned background partition is sought back to its first deferred
        record, or to its position; a seek drops the partition's prefetched records, so what
        arrives on the other topics meanwhile is not queued behind them. Not those in ``skip``
        (sought back further already) nor those paused to retry a record (sought back to it)."""
        if not deferred:
            return
        skip = skip | self._retries.paused()
        first = {(tp.topic, tp.partition): tp.offset for tp in _first_offsets(deferred)}
        background = self._processor.background_topics
        for tp in consumer.position([tp for tp in consumer.assignment() if tp.topic in background]):
            key = (tp.topic, tp.partition)
            offset = first.get(key, tp.offset)
            if key not in skip and offset >= 0:
                consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def _handle_one(self, msg: Message) -> list[Output] | None:
        """The record's outputs (its dead-letter outputs if it failed), None to retry it later;
        never an output Kafka would refuse.

        An output over ``max_record_bytes`` fails the record (:class:`OutputTooLarge`), so nothing of
        it is produced; a dead-letter output over the limit is replaced by a truncated copy of the
        record (:func:`streams.deadletter.dead_letter_copy`) on the same topic; a ``dead_letter`` that
        raises skips the record with an error log naming its coordinates (it stays in its topic).
        """
        verdict, error = self._refusals.verdict(msg)
        if verdict is Verdict.SKIP:
            self._log.error(
                "record skipped: the broker refused its dead letter",
                topic=msg.topic(),
                partition=msg.partition(),
                offset=msg.offset(),
                error=error,
            )
            self._retries.done(msg)
            return []
        if verdict is Verdict.DEAD_LETTER:
            self._retries.done(msg)
            return self._dead_letters(msg, OutputRefused(error))
        savepoints = [store.savepoint() for store in self._processor.stores]
        limit = self._settings.max_record_bytes
        try:
            outputs = self._processor.handle(msg)
            for out in outputs:
                if output_size(out) > limit:
                    raise OutputTooLarge(
                        f"an output to {out.topic} would be {output_size(out)} bytes, more than "
                        f"ABSYNC_MAX_RECORD_BYTES ({limit})"
                    )
        except Exception as exc:
            for store, savepoint in zip(self._processor.stores, savepoints, strict=True):
                store.rollback(savepoint)
            if isinstance(exc, RetryLater) and self._retries.should_retry(msg, exc):
                self._log.info(
                    "record not handled yet, its partition retries later",
                    topic=msg.topic(),
                    partition=msg.partition(),
                    offset=msg.offset(),
                    reason=exc.reason,
                    attempt=exc.attempts,
                )
                return None
            outputs = self._dead_letters(msg, exc)
        self._retries.done(msg)
        return outputs

    def _dead_letters(self, msg: Message, exc: Exception) -> list[Output]:
        """The processor's dead-letter outputs for ``msg``, each within ``max_record_bytes``."""
        limit = self._settings.max_record_bytes
        try:
            letters = self._processor.dead_letter(msg, exc)
        except Exception as failure:
            self._log.error(
                "record skipped: its dead letter failed",
                topic=msg.topic(),
                partition=msg.partition(),
                offset=msg.offset(),
                error=repr(exc),
                dead_letter_error=repr(failure),
            )
            return []
        return [out if output_size(out) <= limit else self._truncated(msg, out, exc) for out in letters]

    def _truncated(self, msg: Message, out: Output, exc: Exception) -> Output:
        """A truncated copy of ``msg`` instead of a dead-letter output too large to write."""
        return dead_letter_copy(
            out.topic,
            key=msg.key(),
            value=msg.value(),
            headers=as_headers(msg.headers()),
            source=coordinates(msg),
            kind="too-large" if isinstance(exc, OutputTooLarge) else "processing",
            reason=f"{type(exc).__name__}: {exc}",
            max_bytes=self._settings.max_record_bytes,
        )

    @staticmethod
    def _produce(
        producer: Producer, out: Output, report: Callable[[KafkaError | None, Message], None] | None
    ) -> None:
        produce(
            producer,
            out.topic,
            out.key,
            out.value,
            headers=list(out.headers),
            partition=out.partition,
            on_delivery=report,
        )

    def _usable(self, msg: Message) -> bool:
        error = msg.error()
        if error is None:
            return True
        if error.code() != KafkaError._PARTITION_EOF:
            self._log.warning("consumer error", error=str(error))
        return False

    # -- rebalance ----------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = sorted({tp.partition for tp in partitions})
        self._retries.forget(partitions)
        self._refusals.forget()
        for store in self._processor.stores:
            store.restore(numbers)
        self._processor.on_assign(partitions)
        self._log.info("partitions assigned", partitions=numbers)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = sorted({tp.partition for tp in partitions})
        self._retries.forget(partitions)
        self._processor.on_revoke(partitions)
        for store in self._processor.stores:
            store.drop(numbers)
        self._log.info("partitions revoked", partitions=numbers)


def _next_offsets(batch: list[Message]) -> list[TopicPartition]:
    """The offsets to commit: one past the last record of each partition in the batch."""
    last: dict[tuple[str, int], int] = {}
    for msg in batch:
        topic, partition, offset = coordinates(msg)
        last[(topic, partition)] = offset + 1
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in last.items()]


def _first_offsets(batch: list[Message]) -> list[TopicPartition]:
    """Where to seek back to after an abort: the first record of each partition in the batch."""
    first: dict[tuple[str, int], int] = {}
    for msg in batch:
        topic, partition, offset = coordinates(msg)
        first.setdefault((topic, partition), offset)
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in first.items()]


class ProcessorComponent:
    """The asyncio face of a runtime for :mod:`absync.service`: runs it in a thread until ``stop``."""

    def __init__(self, name: str, runtime: Callable[[threading.Event], None]) -> None:
        self.name = name
        self._runtime = runtime

    async def run(self, stop: asyncio.Event) -> None:
        halt = threading.Event()
        # A thread of its own: this loop runs for the life of the service (streams/threads.py).
        worker = asyncio.create_task(run_in_thread(self._runtime, halt, name=f"{self.name}-loop"))
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait([worker, waiter], return_when=asyncio.FIRST_COMPLETED)
        halt.set()
        waiter.cancel()
        await worker
