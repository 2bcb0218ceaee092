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

The same topic also holds the scheduler's post records (keys ``post|...``, see
:mod:`processors.slack_scheduler`); each side ignores the other's keys.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable

import structlog
from confluent_kafka import Message

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
from streams.kafka import read_compacted
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

        read_compacted(self._settings, self._topic, apply, follow=self._stop, on_caught_up=self._ready.set)
