"""The "who is absent on which day" projection behind the Slack daily post.

Write side, :class:`DailyAbsencesProcessor` (exactly-once, :mod:`streams.processor`): reads
``absences`` and keeps the latest event of every absence in a :class:`streams.state.StateStore`
whose changelog is the compacted ``daily-absences`` topic, keyed ``absence|<tenant>|<absence id>``
(same partition as the absence). Older versions are ignored (a replay changes nothing); cancelled and
deleted absences are kept as such (so a late, older event cannot bring them back) until they are
over; absences that ended more than :data:`KEEP_DAYS` days ago are removed (tombstones), so the topic
stays the size of the current absences. Invalid records are the fan-out's business (it dead-letters
them to ``absences.invalid``); here they are skipped, so each has one dead-letter copy, not two. A
valid record this processor fails on (a bug) is dead-lettered here, kind ``processing``, with the
header ``absync-processor: slack-daily``, and the next record is handled.

Read side, :class:`DailyAbsenceTable`: a thread reads every partition of ``daily-absences`` from the
start (read_committed) and keeps the live absences per tenant in memory; the scheduler asks it
:meth:`DailyAbsenceTable.on` for a tenant's absences touching some days. The changelog survives
restarts; deleting the topic and replaying ``absences`` (compacted: latest state of every absence)
rebuilds it.

Before a day's first post the scheduler asks :class:`AbsencesRead` whether the projection (its
offsets committed in ``absences``, by whichever workers own the partitions) and then the table have
caught up with ``absences`` as it ended when the post came due: after a restart with a backlog, the
post is made once with every absence, not made early and edited seconds later.

The same topic also holds the scheduler's post records (keys ``post|...``, see
:mod:`processors.slack_scheduler`); each side ignores the other's keys.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import structlog
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from processors.validation import (
    ErrorKind,
    InvalidRecord,
    RegistryPatience,
    absence_codec,
    dead_letter,
    decode_event,
)
from schemas.codec import AvroCodec
from schemas.models import AbsenceEvent
from streams.kafka import ReadBarrier, group_id, make_admin, make_reader, read_compacted, watermarks
from streams.processor import Output, Processor
from streams.records import coordinates
from streams.settings import Settings
from streams.state import StateStore
from streams.topics import Topics

log = structlog.get_logger(__name__)

PREFIX = "absence|"
KEEP_DAYS = 3
"""Days an ended absence stays in the projection (a day's post is updated until its end)."""
SWEEP_SECONDS = 3600.0

Clock = Callable[[], dt.datetime]
"""Aware UTC now; tests give a fixed day."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def entry_key(event: AbsenceEvent) -> str:
    return f"{PREFIX}{event.tenant}|{event.absence.id}"


def is_live(event: AbsenceEvent) -> bool:
    """Whether the absence is to be shown at all (neither cancelled, refused nor deleted)."""
    return not event.change.removes and not event.absence.status.removed


class DailyAbsencesProcessor(Processor):
    name = "slack-daily"

    def __init__(self, settings: Settings, clock: Clock = utc_now) -> None:
        topics = Topics(settings)
        self.topics = [topics.absences]
        self._codec: AvroCodec = absence_codec(settings)
        self._patience = RegistryPatience.of(settings)
        self._max_event_bytes = settings.max_event_bytes
        self._max_record = settings.max_record_bytes
        self._invalid = topics.invalid
        self._state = StateStore(settings, topics.daily_absences)
        self.stores = [self._state]
        self._clock = clock
        self._next_sweep = 0.0

    def handle(self, msg: Message) -> list[Output]:
        _, partition, _ = coordinates(msg)
        if msg.value() is None and msg.key():  # an erasure's tombstone (docs/privacy.md): forget it
            key = PREFIX + (msg.key() or b"").decode(errors="replace")
            if self._state.get(partition, key) is not None:
                self._state.delete(partition, key)
            return []
        event = decode_event(self._codec, msg, self._max_event_bytes, self._patience)
        key = entry_key(event)
        raw = self._state.get(partition, key)
        if raw is not None and json.loads(raw)["version"] >= event.version:
            return []
        self._state.put(partition, key, json.dumps(event.to_json(), separators=(",", ":")).encode())
        return []

    def dead_letter(self, msg: Message, exc: Exception) -> list[Output]:
        if isinstance(exc, InvalidRecord):  # the fan-out dead-letters the same record
            log.info("record not projected", topic=msg.topic(), offset=msg.offset(), reason=exc.reason[:500])
            return []
        log.error("record not projected: dead-lettered", topic=msg.topic(), offset=msg.offset(), exc_info=exc)
        copy = dead_letter(
            self._invalid, msg, ErrorKind.PROCESSING, f"{type(exc).__name__}: {exc}", self._max_record
        )
        return [
            Output(
                copy.topic, copy.key, copy.value, [*copy.headers, ("absync-processor", self.name.encode())]
            )
        ]

    def punctuate(self) -> list[Output]:
        """Once an hour, removes the absences that ended more than KEEP_DAYS days ago."""
        if time.monotonic() < self._next_sweep:
            return []
        self._next_sweep = time.monotonic() + SWEEP_SECONDS
        horizon = (self._clock().date() - dt.timedelta(days=KEEP_DAYS)).isoformat()
        for partition in self._state.partitions():
            for key, raw in self._state.items(partition):
                if key.startswith(PREFIX) and json.loads(raw)["absence"]["end_date"] < horizon:
                    self._state.delete(partition, key)
        return []


class DailyAbsenceTable:
    """Live absences per tenant, kept from ``daily-absences`` by a background thread."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topic = Topics(settings).daily_absences
        self._tenants: dict[str, dict[str, AbsenceEvent]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._barrier = ReadBarrier()

    def caught_up(self) -> Future[None]:
        """Done once the table has read what ``daily-absences`` held when asked (see ReadBarrier)."""
        return self._barrier.ask()

    def start(self) -> DailyAbsenceTable:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="daily-absences-table", daemon=True)
            self._thread.start()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Returns once the table holds everything committed when it started."""
        if not self._ready.wait(timeout):
            raise TimeoutError(f"{self._topic} not read to its end in {timeout}s")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def on(self, tenant: str, first: dt.date, last: dt.date) -> list[AbsenceEvent]:
        """The tenant's live absences that touch a day between ``first`` and ``last``."""
        with self._lock:
            events = list(self._tenants.get(tenant, {}).values())
        return [e for e in events if e.absence.start_date <= last and e.absence.end_date >= first]

    def _apply(self, key: str, value: bytes | None) -> None:
        tenant, _, absence_id = key.removeprefix(PREFIX).partition("|")
        event = AbsenceEvent.from_json(json.loads(value)) if value is not None else None
        with self._lock:
            held = self._tenants.setdefault(tenant, {})
            if event is not None and is_live(event):
                held[absence_id] = event
            else:
                held.pop(absence_id, None)

    def _run(self) -> None:
        def apply(msg: Message) -> None:
            key = (msg.key() or b"").decode(errors="replace")
            if key.startswith(PREFIX):
                self._apply(key, msg.value())

        read_compacted(
            self._settings,
            self._topic,
            apply,
            follow=self._stop,
            on_caught_up=self._ready.set,
            barrier=self._barrier,
        )


class AbsencesRead:
    """Whether the daily absences projection, then :class:`DailyAbsenceTable`, have read ``absences``
    as far as it went at some moment: :meth:`since` never blocks longer than a few broker round
    trips (:data:`CALL_TIMEOUT` each), so the scheduler asks again on its next tick.

    One check at a time: it takes the end offsets of ``absences`` (read_committed: the last stable
    offsets), waits for the projection's committed offsets to reach them (a partition left one short
    by a trailing transaction marker is read from its committed offset to tell a marker from a
    record), then for the table to read ``daily-absences`` to its end (ReadBarrier). A check
    completed serves every question about a moment before it started. Broker errors are logged and
    the question is asked again later; the caller bounds the wait.
    """

    CALL_TIMEOUT = 2.0
    MIN_INTERVAL = 0.25
    """Seconds between two advances of a check: destinations asking in the same tick share one."""

    def __init__(self, settings: Settings, table: DailyAbsenceTable) -> None:
        self._settings = settings
        self._topic = Topics(settings).absences
        self._group = group_id(settings, DailyAbsencesProcessor.name)
        self._table = table
        self._admin: AdminClient | None = None
        self._reader: Consumer | None = None
        self._check: tuple[float, dict[int, int]] | None = None
        """(monotonic start, absences partition -> end offset) of the check under way."""
        self._table_read: Future[None] | None = None
        self._covered = float("-inf")
        """Start of the last completed check: questions about an earlier moment are answered."""
        self._advanced = float("-inf")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def since(self, moment: float) -> bool:
        """Whether every absence committed to ``absences`` before ``moment`` (monotonic) is in the
        table; starts or advances a check."""
        if self._covered >= moment:
            return True
        now = time.monotonic()
        if now - self._advanced < self.MIN_INTERVAL:
            return False
        self._advanced = now
        try:
            return self._advance()
        except Exception as exc:  # never the post's failure: asked again, and the caller bounds the wait
            log.warning("could not tell whether the daily absences are read", error=repr(exc))
            self._check, self._table_read = None, None
            return False

    def _advance(self) -> bool:
        if self._check is None:
            reader = self._reader_consumer()
            metadata = reader.list_topics(self._topic, timeout=self.CALL_TIMEOUT).topics.get(self._topic)
            if metadata is None or metadata.error is not None:
                raise KafkaException(f"topic {self._topic} not available")
            started = time.monotonic()
            ends = {
                p: watermarks(reader, TopicPartition(self._topic, p), self.CALL_TIMEOUT)[1]
                for p in metadata.partitions
            }
            self._check = (started, ends)
        started, ends = self._check
        if self._table_read is None:
            if not self._projection_reached(ends):
                return False
            self._table_read = self._table.caught_up()
        if not self._table_read.done():
            return False
        failure = self._table_read.exception()
        self._check, self._table_read = None, None
        if failure is not None:
            raise TimeoutError(str(failure))
        self._covered = started
        return True

    def _projection_reached(self, ends: dict[int, int]) -> bool:
        """Whether the projection's committed offsets reach ``ends`` (partitions with records)."""
        wanted = [TopicPartition(self._topic, p) for p, end in ends.items() if end > 0]
        if not wanted:
            return True
        admin = self._admin_client()
        request = [ConsumerGroupTopicPartitions(self._group, wanted)]
        futures = admin.list_consumer_group_offsets(request, request_timeout=self.CALL_TIMEOUT)
        answer = next(iter(futures.values())).result(timeout=self.CALL_TIMEOUT)
        behind = {
            tp.partition: max(tp.offset, 0)
            for tp in answer.topic_partitions
            if tp.offset < ends[tp.partition]
        }
        return all(self._nothing_between(p, committed, ends[p]) for p, committed in behind.items())

    def _nothing_between(self, partition: int, committed: int, end: int) -> bool:
        """Whether ``absences`` has no committed record in [committed, end) (only markers or aborted
        records: a transactional writer's last marker sits one past the offset the projection
        commits). Reads at most one record."""
        reader = self._reader_consumer()
        reader.assign([TopicPartition(self._topic, partition, committed)])
        deadline = time.monotonic() + self.CALL_TIMEOUT
        try:
            while time.monotonic() < deadline:
                for msg in reader.consume(1, 0.05):
                    if msg.error() is None and (msg.offset() or 0) < end:
                        return False
                [position] = reader.position([TopicPartition(self._topic, partition)])
                if position.offset >= end:
                    return True
            return False
        finally:
            reader.unassign()

    def _reader_consumer(self) -> Consumer:
        if self._reader is None:
            self._reader = make_reader(self._settings)
        return self._reader

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            self._admin = make_admin(self._settings)
        return self._admin
