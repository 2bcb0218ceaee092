"""The projection component: reads the status and destinations topics into the SQL view.

It assigns itself every partition of both topics and seeks to the offsets stored in the database
(``consumer_offsets``, written in the same transaction as the rows), so a crash at any point
replays exactly what was not committed. Kafka group commits are not used. Run one runner per
database; a second one is harmless but useless: its batches wait for the offset rows the first one
locks and skip what they cover (or fail on a first insert), so nothing is applied twice.

No record stops the projection. A record it cannot decode, or whose rows the database refuses (a
data or integrity error: the batch is rolled back and applied again one record at a time to find
it), is copied to ``projection.invalid`` (:mod:`streams.deadletter`: original key and value, reason
and source headers) and its offset advances. The copy is acknowledged by Kafka before the offset
commits in the database, so a crash in between writes the copy twice, never zero times. Errors that
are not about one record (database or Kafka unreachable) still end the loop: on restart it resumes
from the stored offsets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import sqlalchemy as sa
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition
from sqlalchemy.engine import Engine

from projections.db import engine_for, migrate, writer
from projections.exceptions import ProjectionError
from projections.privacy import Privacy, drop_old_payloads
from projections.projector import CONSUMER, BatchResult, Projector, SourceRecord, stored_offsets
from streams.deadletter import dead_letter_copy
from streams.kafka import group_id, make_consumer, make_producer
from streams.settings import Settings
from streams.threads import run_in_thread
from streams.topics import Topics

log = structlog.get_logger(__name__)

BATCH_SIZE = 500
POLL_TIMEOUT = 0.5
SWEEP_SECONDS = 600.0
"""How often the runner drops payloads past their retention from the view (and once at start)."""


def _split(messages: list[Message]) -> tuple[list[SourceRecord], set[tuple[str, int]]]:
    """The records of one poll, and the partitions that reported reaching their end."""
    records, at_end = [], set()
    for message in messages:
        topic, partition = message.topic() or "", message.partition() or 0
        error = message.error()
        if error is None:
            records.append(
                SourceRecord(topic, partition, message.offset() or 0, message.key(), message.value())
            )
        elif error.code() == KafkaError._PARTITION_EOF:
            at_end.add((topic, partition))
        else:
            log.warning("consumer error", error=str(error))
    return records, at_end


class ProjectionRunner:
    """Blocking consume -> apply loop; :meth:`run` runs it in a thread for the service."""

    name = "projection"

    def __init__(
        self, settings: Settings, engine: Engine | None = None, batch_size: int = BATCH_SIZE
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings)
        self.engine = engine or engine_for(settings)
        self.batch_size = batch_size
        self.privacy = Privacy.from_settings(settings)
        self.projector = Projector(self.topics.status, self.topics.destinations, CONSUMER, self.privacy)
        self._producer: Producer | None = None
        self._next_sweep = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        # A thread of its own, not the default executor: this loop runs for the life of the service.
        await run_in_thread(self.run_blocking, stop.is_set, name="projection-loop")

    def _consumer(self) -> Consumer:
        consumer = make_consumer(
            self.settings, group_id(self.settings, CONSUMER), **{"enable.partition.eof": True}
        )
        with self.engine.connect() as conn:
            stored = stored_offsets(conn, CONSUMER)
        assignment = []
        for topic in (self.topics.status, self.topics.destinations):
            metadata = consumer.list_topics(topic, timeout=30).topics[topic]
            if metadata.error is not None:
                raise ProjectionError(f"cannot read topic {topic}: {metadata.error}")
            for partition in sorted(metadata.partitions):
                assignment.append(
                    TopicPartition(topic, partition, stored.get((topic, partition), OFFSET_BEGINNING))
                )
        consumer.assign(assignment)
        log.info("projection assigned", partitions=len(assignment), stored=len(stored))
        return consumer

    def apply(self, records: list[SourceRecord]) -> BatchResult:
        """One batch, one transaction: the rows and the next offsets commit together. A batch the
        database refuses because of one record's data is applied again record by record, and the
        refused record dead-lettered (see the module docstring)."""
        try:
            return self._apply_together(records)
        except Exception as exc:
            if not _is_record_error(exc):
                raise
            log.warning("batch refused by the database: applied record by record", error=str(exc)[:500])
        total = BatchResult()
        for record in records:
            try:
                result = self._apply_together([record])
            except Exception as exc:
                if not _is_record_error(exc):
                    raise
                result = self._reject(record, f"refused by the database: {type(exc).__name__}: {exc}")
            total.applied += result.applied
            total.already_applied += result.already_applied
            total.undecodable += result.undecodable
            total.rejected += result.rejected
            for where, offset in result.next_offsets.items():
                total.next_offsets[where] = max(total.next_offsets.get(where, 0), offset)
        return total

    def _apply_together(self, records: list[SourceRecord]) -> BatchResult:
        with writer(self.engine.connect()) as conn, conn.begin():
            result = self.projector.apply(conn, records)
            self._dead_letter(result.rejected)  # acknowledged before the offsets commit
            return result

    def _reject(self, record: SourceRecord, reason: str) -> BatchResult:
        log.error(
            "record refused by the database: dead-lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=reason[:1000],
        )
        with writer(self.engine.connect()) as conn, conn.begin():
            result = self.projector.skip(conn, record)
            if not result.already_applied:
                result.rejected.append((record, reason))
                result.undecodable += 1
                self._dead_letter(result.rejected)
            return result

    def _dead_letter(self, rejected: list[tuple[SourceRecord, str]]) -> None:
        """Copies rejected records to ``projection.invalid``; raises unless Kafka acknowledged all."""
        if not rejected:
            return
        if self._producer is None:
            self._producer = make_producer(self.settings)
        errors: list[str] = []

        def acknowledged(err: object, _msg: object) -> None:
            if err is not None:
                errors.append(str(err))

        for record, reason in rejected:
            out = dead_letter_copy(
                self.topics.projection_invalid,
                key=record.key,
                value=record.value,
                headers=[],
                source=(record.topic, record.partition, record.offset),
                kind="unstorable",
                reason=reason,
                max_bytes=self.settings.max_record_bytes,
            )
            headers: list[tuple[str, str | bytes | None]] = list(out.headers)
            self._producer.produce(
                out.topic, key=out.key, value=out.value, headers=headers, on_delivery=acknowledged
            )
        if self._producer.flush(30) or errors:
            raise ProjectionError(f"dead letter not acknowledged by Kafka: {errors[:1] or 'timeout'}")

    def run_blocking(self, should_stop: Callable[[], bool], *, until_caught_up: bool = False) -> int:
        """Consumes until ``should_stop()`` (or, with ``until_caught_up``, until every assigned
        partition has been read to its end once). Returns the number of records applied.

        A database error ends the loop (and the service): on restart the runner seeks to the
        stored offsets again, so nothing is lost or applied twice."""
        migrate(self.engine)
        consumer = self._consumer()
        pending_eof = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        applied = 0
        try:
            while not should_stop():
                records, at_end = _split(consumer.consume(num_messages=self.batch_size, timeout=POLL_TIMEOUT))
                pending_eof -= at_end
                result = self.apply(records) if records else BatchResult()
                applied += result.applied
                if result.applied or result.undecodable:
                    log.debug("projection batch", applied=result.applied, rejected=result.undecodable)
                if until_caught_up and not pending_eof:
                    break
                self._sweep()
        finally:
            consumer.close()
            if self._producer is not None:
                self._producer.flush(10)
        return applied

    def _sweep(self) -> None:
        """Drops the payloads past ABSYNC_PAYLOAD_RETENTION from the view, every SWEEP_SECONDS."""
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + SWEEP_SECONDS
        drop_old_payloads(self.engine, self.privacy.clock() - self.privacy.retention)


def _is_record_error(exc: Exception) -> bool:
    """Whether the database refused a batch because of what a record holds (not an outage): a
    data or integrity error, or a value the driver or a column type could not bind."""
    if isinstance(exc, sa.exc.DataError | sa.exc.IntegrityError):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        return False  # operational (connection, server): not one record's fault
    return isinstance(exc, sa.exc.StatementError | ValueError | TypeError | KeyError)


def build(settings: Settings) -> ProjectionRunner:
    return ProjectionRunner(settings)


def catch_up(settings: Settings, engine: Engine | None = None) -> tuple[int, float]:
    """Applies everything up to the end of the topics, then returns (records applied, seconds)."""
    started = time.monotonic()
    applied = ProjectionRunner(settings, engine).run_blocking(lambda: False, until_caught_up=True)
    return applied, time.monotonic() - started
