"""The Slack daily post: when to post, and exactly one post per destination (channel) per day.

The component "slack" (``absync run --only slack``) runs two processors (:mod:`streams.processor`):

1. :class:`processors.slack_daily.DailyAbsencesProcessor`, the projection of who is absent which day,
   from ``absences`` into the compacted ``daily-absences`` topic;
2. :class:`SlackScheduler`, which posts. It consumes the one-partition ``destinations`` topic in its
   own consumer group, so exactly one worker at a time owns partition 0 and is the only one to decide
   (the others idle); a new owner fences the previous one (transactional id, group generation). Its
   post records live in a :class:`streams.state.StateStore` on changelog partition 0 of
   ``daily-absences`` under keys ``post|<destination>|<day>`` -> channel, message ts and a digest of
   the text. The first record of a day is an *intent* (no ts), committed in the owner's Kafka
   transaction before any Slack call; the ts and digest are committed right after each call.

Every ``tick`` seconds the owner looks at each enabled Slack destination. On a working day, from the
local ``post_time`` until the local midnight, it renders the day's post
(:mod:`processors.slack_message`) from the absences table, filtered like any destination (tenant,
filters; pending absences only when the destination takes all changes), and compares it with the
record: no record -> post; a different text -> ``chat.update`` of the recorded message (a late change
edits the post in place); same text -> nothing. A post missed at ``post_time`` (service down) is made
as soon as possible the same day, never on a later day.

Exactly once, even across restarts, several workers or a replay: one decider (above), and a zombie
owner cannot commit the intent, so it never reaches Slack; a restarted owner restores the records;
and when the ts is not known (a crash between the post and its commit, a rebuilt topic) the connector
looks for the day's post by the metadata it carries in the channel history before posting
(:meth:`connectors.slack.SlackConnector.publish`), so it is updated, not posted again.

Why not through the delivery pipeline: a ``Delivery`` carries one absence event, and the post is the
result of a whole day of absences of one tenant; routing it as a Delivery would need a new record
shape (the post's text and day) in ``deliveries``, the delivery state and the console. So the
scheduler calls the connector itself, with the same semantics: a ``RetryableError`` pauses that
destination for the first retry delay (``retry_delays``, 5 min by default), a ``BackpressureError``
(429) as long and never less than its ``Retry-After``; a ``PermanentError`` (app not invited to a
private channel, bad token) for :data:`PERMANENT_PAUSE` seconds, logged as an error with the
connector's message.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from confluent_kafka import Message

from connectors.base import CallRecorder, ConnectorOptions, DigestConnector
from connectors.exceptions import BackpressureError, ConnectorError, PermanentError
from connectors.registry import digest_connector_class
from processors.slack_daily import Clock, DailyAbsencesProcessor, DailyAbsenceTable, utc_now
from processors.slack_message import PostSettings, PostSettingsError, render
from schemas.destination import ChangeSelection, Destination
from schemas.models import AbsenceEvent, AbsenceStatus
from streams.destinations import DestinationTable
from streams.processor import Output, Processor, ProcessorComponent, ProcessorRuntime
from streams.secrets import SecretBox, SecretDecryptionError
from streams.settings import Settings
from streams.state import StateStore
from streams.topics import Topics

log = structlog.get_logger(__name__)

POST_PREFIX = "post|"
PERMANENT_PAUSE = 900.0
KEEP_RECORDS_DAYS = 7
OWNER_PARTITION = 0


@dataclass(frozen=True)
class PostRecord:
    """The day's post of one destination: its channel, its message (None: intent declared, not yet
    known to be made) and the digest of the text it shows."""

    channel: str
    ts: str | None
    digest: str

    def to_bytes(self) -> bytes:
        return json.dumps({"channel": self.channel, "ts": self.ts, "digest": self.digest}).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> PostRecord:
        data = json.loads(raw)
        return cls(str(data["channel"]), data["ts"], str(data["digest"]))


def shown(destination: Destination, event: AbsenceEvent) -> bool:
    """Filtered like any destination; pending absences only for a destination taking all changes."""
    if not destination.matches(event):
        return False
    return destination.changes == ChangeSelection.ALL or event.absence.status == AbsenceStatus.APPROVED


class SlackScheduler(Processor):
    name = "slack-scheduler"

    def __init__(
        self,
        settings: Settings,
        destinations: DestinationTable,
        absences: DailyAbsenceTable,
        *,
        clock: Clock = utc_now,
        tick: float = 10.0,
    ) -> None:
        topics = Topics(settings)
        self.topics = [topics.destinations]
        self._posts = StateStore(settings, topics.daily_absences)
        self.stores = [self._posts]
        self._destinations = destinations
        self._absences = absences
        self._clock = clock
        self._tick = tick
        self._retry_delay = settings.retry_delays[0]
        self._box = SecretBox.from_settings(settings)
        self._options = ConnectorOptions.from_settings(settings)
        self._connectors: dict[str, tuple[int, DigestConnector]] = {}
        self._paused: dict[tuple[str, int], float] = {}
        """(destination id, revision) -> monotonic time before which it is not tried (a fix resumes it)."""
        self._next_tick = 0.0
        self._next_sweep = 0.0

    def open(self) -> None:
        self._destinations.start()
        self._absences.start()
        self._destinations.wait_ready(60)
        self._absences.wait_ready(60)

    def close(self) -> None:
        self._destinations.close()
        self._absences.close()

    def handle(self, msg: Message) -> list[Output]:
        """Destination records only mark ownership; their content comes from the destination table."""
        return []

    def punctuate(self) -> list[Output]:
        if OWNER_PARTITION not in self._posts.partitions() or time.monotonic() < self._next_tick:
            return []
        self._next_tick = time.monotonic() + self._tick
        now = self._clock()
        for destination in self._destinations.all():
            due = self._paused.get((destination.id, destination.revision), 0.0) <= time.monotonic()
            if destination.kind == "slack" and destination.enabled and due:
                self._attempt(destination, now)
        self._sweep(now.date())
        return []

    # -- one destination ----------------------------------------------------------------------
    def _attempt(self, destination: Destination, now: dt.datetime) -> None:
        bound = log.bind(destination=destination.id)
        try:
            self._post(destination, now)
        except BackpressureError as exc:
            self._pause(destination, max(self._retry_delay, exc.retry_after or 0.0))
            bound.warning("slack rate limit, post delayed", retry_after=exc.retry_after, error=exc.message)
        except PermanentError as exc:
            self._pause(destination, PERMANENT_PAUSE)
            bound.error("slack daily post failed", error=exc.message)
        except ConnectorError as exc:
            self._pause(destination, self._retry_delay)
            bound.warning("slack daily post will be tried again", error=exc.message)
        except (PostSettingsError, SecretDecryptionError) as exc:
            self._pause(destination, PERMANENT_PAUSE)
            bound.error("slack destination misconfigured", error=str(exc))
        except Exception:  # a bug with one destination must not stop the others' posts
            self._pause(destination, PERMANENT_PAUSE)
            bound.exception("slack daily post crashed")

    def _pause(self, destination: Destination, seconds: float) -> None:
        self._paused[(destination.id, destination.revision)] = time.monotonic() + seconds

    def _post(self, destination: Destination, now: dt.datetime) -> None:
        settings = PostSettings.from_settings(destination.settings)
        local = now.astimezone(settings.zone)
        day = local.date()
        if not settings.is_working_day(day) or local.time() < settings.post_time:
            return
        last = settings.next_working_day(day) if settings.show_tomorrow else day
        events = [e for e in self._absences.on(destination.tenant, day, last) if shown(destination, e)]
        text = render(day, events, settings)
        poster = self._connector(destination)
        digest = hashlib.sha256(f"{poster.channel}\x00{text}".encode()).hexdigest()
        key = f"{POST_PREFIX}{destination.id}|{day.isoformat()}"
        raw = self._posts.get(OWNER_PARTITION, key)
        record = PostRecord.from_bytes(raw) if raw is not None else None
        if record is None or record.channel != poster.channel:
            # The intent is committed before any Slack call: a fenced (zombie) owner fails here, and
            # whoever finds an intent without a ts looks for the post before making one.
            self._posts.put(OWNER_PARTITION, key, PostRecord(poster.channel, None, "").to_bytes())
            self._next_tick = 0.0
            return
        if record.digest == digest:
            return
        midnight = dt.datetime.combine(day, dt.time(0), tzinfo=settings.zone).timestamp()
        published = poster.publish(day.isoformat(), text, record.ts, midnight, CallRecorder())
        self._posts.put(OWNER_PARTITION, key, PostRecord(poster.channel, published.ts, digest).to_bytes())
        log.info(
            "slack daily post",
            destination=destination.id,
            day=day.isoformat(),
            action=published.action,
            ts=published.ts,
        )

    def _connector(self, destination: Destination) -> DigestConnector:
        cached = self._connectors.get(destination.id)
        if cached is not None and cached[0] == destination.revision:
            return cached[1]
        secrets = self._box.decrypt_all(destination.secrets)
        poster = digest_connector_class(destination.kind)(destination, secrets, self._options)
        self._connectors[destination.id] = (destination.revision, poster)
        return poster

    def _sweep(self, today: dt.date) -> None:
        """Once an hour, forgets post records older than KEEP_RECORDS_DAYS days."""
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + 3600.0
        horizon = (today - dt.timedelta(days=KEEP_RECORDS_DAYS)).isoformat()
        for key, _ in self._posts.items(OWNER_PARTITION):
            if key.startswith(POST_PREFIX) and key.rsplit("|", 1)[1] < horizon:
                self._posts.delete(OWNER_PARTITION, key)


def run_together(runtimes: Sequence[ProcessorRuntime], halt: threading.Event) -> None:
    """Runs the runtimes in threads until ``halt``; the first failure stops them all and is raised."""
    errors: list[BaseException] = []

    def guarded(runtime: ProcessorRuntime) -> None:
        try:
            runtime.run(halt)
        except BaseException as exc:
            errors.append(exc)
            halt.set()

    threads = [threading.Thread(target=guarded, args=(r,), name=f"slack-{i}") for i, r in enumerate(runtimes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def runtimes(
    settings: Settings, *, clock: Clock = utc_now, tick: float = 10.0, worker_id: str | None = None
) -> list[ProcessorRuntime]:
    """The projection and the scheduler, each in its runtime (``clock`` and ``tick`` for tests)."""
    projection = DailyAbsencesProcessor(settings, clock)
    scheduler = SlackScheduler(
        settings, DestinationTable(settings), DailyAbsenceTable(settings), clock=clock, tick=tick
    )
    return [
        ProcessorRuntime(settings, projection, worker_id=worker_id),
        ProcessorRuntime(settings, scheduler, worker_id=worker_id),
    ]


def build(settings: Settings) -> ProcessorComponent:
    """The component "slack" of ``absync run``: the daily absences projection and the post scheduler."""
    parts = runtimes(settings)
    return ProcessorComponent("slack", lambda halt: run_together(parts, halt))
