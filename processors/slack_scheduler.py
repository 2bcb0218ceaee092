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
as soon as possible the same day, never on a later day. A day's first post waits until the absences
published before it came due are in the table (:class:`processors.slack_daily.AbsencesRead`: after a
restart with a backlog the projection may still be reading), at most :data:`HOLD_LIMIT` seconds;
then it is made with what the table holds, with a warning, and later changes edit it.

Exactly once, even across restarts, several workers or a replay: one decider (above), and a zombie
owner cannot commit the intent, so it never reaches Slack; a restarted owner restores the records;
and when the ts is not known (a crash between the post and its commit, a rebuilt topic) the connector
looks for the day's post by the metadata it carries in the channel history before posting
(:meth:`connectors.slack.SlackConnector.publish`), so it is updated, not posted again.

Each post is followed as a delivery (:mod:`processors.slack_followup`): a status fact per status
change and attempt, written in the owner's transaction with the post record; the pipeline's retry
ladder applied here (the record says when the next attempt is due); operator commands (Retry, Mark as
processed) arrive on the one-partition ``slack-commands`` topic, which the delivery worker forwards
them to and which this processor consumes with ``destinations`` (range assignor: partition 0 of
both goes to the same worker, the owner). A destination whose settings or secrets cannot be read has
no post to follow: it is paused for :data:`PERMANENT_PAUSE` seconds, logged as an error.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import structlog
from confluent_kafka import Message

from connectors.base import CallRecorder, ConnectorOptions, DigestConnector
from connectors.exceptions import ConnectorError, PermanentError, RetryableError
from connectors.registry import digest_connector_class
from processors.slack_daily import AbsencesRead, Clock, DailyAbsencesProcessor, DailyAbsenceTable, utc_now
from processors.slack_followup import MANUAL, PostRecord, after_failure, post_attempt, post_status
from processors.slack_message import PostSettings, PostSettingsError, render
from schemas.codec import codec_for
from schemas.delivery import (
    SLACK_POST_PREFIX,
    Attempt,
    Command,
    CommandKind,
    Status,
    Trigger,
    bounded_external_id,
    slack_post_delivery_id,
)
from schemas.destination import ChangeSelection, Destination
from schemas.models import AbsenceEvent, AbsenceStatus
from streams.deadletter import dead_letter_copy
from streams.destinations import DestinationTable
from streams.processor import Output, Processor, ProcessorComponent, ProcessorRuntime
from streams.records import coordinates
from streams.secrets import SecretBox, SecretDecryptionError
from streams.settings import Settings
from streams.state import StateStore
from streams.topics import Topics

log = structlog.get_logger(__name__)

POST_PREFIX = "post|"
PERMANENT_PAUSE = 900.0
KEEP_RECORDS_DAYS = 7
OWNER_PARTITION = 0
HOLD_LIMIT = 300.0
"""Seconds a day's first post waits for the absences projection to catch up before it goes anyway."""
HOLD_TICK = 0.5
"""Seconds between two looks at the projection while a first post waits for it."""


def post_key(destination_id: str, day: dt.date) -> str:
    """The store key of a destination's post of ``day``."""
    return f"{POST_PREFIX}{destination_id}|{day.isoformat()}"


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
        # Both one partition: the range assignor gives partition 0 of each to the same worker.
        self.topics = [topics.destinations, topics.slack_commands]
        self._commands_topic = topics.slack_commands
        self._status_topic = topics.status
        self._invalid_topic = topics.deliveries_invalid
        self._max_record = settings.max_record_bytes
        self._posts = StateStore(settings, topics.daily_absences)
        self.stores = [self._posts]
        self._destinations = destinations
        self._absences = absences
        self._clock = clock
        self._tick = tick
        self._retry_delays = settings.retry_delays
        self._box = SecretBox.from_settings(settings)
        self._options = ConnectorOptions.from_settings(settings)
        self._connectors: dict[str, tuple[int, DigestConnector]] = {}
        self._paused: dict[tuple[str, int], float] = {}
        """(destination id, revision) -> monotonic time before which it is not tried (a fix resumes it)."""
        self._next_tick = 0.0
        self._next_sweep = 0.0
        self._read = AbsencesRead(settings, absences)
        self._held: dict[tuple[str, dt.date], float] = {}
        """(destination id, day) -> monotonic time its first post was found due (while it waits)."""

    def open(self) -> None:
        self._destinations.start()
        self._absences.start()
        self._destinations.wait_ready(60)
        self._absences.wait_ready(60)

    def close(self) -> None:
        self._read.close()
        self._destinations.close()
        self._absences.close()

    def handle(self, msg: Message) -> list[Output]:
        """Destination records only mark ownership (their content comes from the destination table);
        a command (Retry, Mark as processed of a post) is carried out here, in the transaction."""
        if msg.topic() != self._commands_topic:
            return []
        return self.command(Command.from_avro(codec_for("Command").decode(msg.value() or b"")))

    def punctuate(self) -> list[Output]:
        if OWNER_PARTITION not in self._posts.partitions() or time.monotonic() < self._next_tick:
            return []
        self._next_tick = time.monotonic() + self._tick
        now = self._clock()
        outputs: list[Output] = []
        for destination in self._destinations.all():
            due = self._paused.get((destination.id, destination.revision), 0.0) <= time.monotonic()
            if destination.kind == "slack" and destination.enabled and due:
                outputs += self._guarded(destination, now)
        return outputs + self._sweep(now)

    # -- one destination ----------------------------------------------------------------------
    def _guarded(self, destination: Destination, now: dt.datetime) -> list[Output]:
        """The destination's post, if one is due; a broken destination is paused, never raised."""
        bound = log.bind(destination=destination.id)
        try:
            return self._post(destination, now)
        except (PostSettingsError, SecretDecryptionError, ConnectorError) as exc:
            self._pause(destination, PERMANENT_PAUSE)
            bound.error("slack destination misconfigured", error=str(exc))
        except Exception:  # a bug with one destination must not stop the others' posts
            self._pause(destination, PERMANENT_PAUSE)
            bound.exception("slack daily post crashed")
        return []

    def _pause(self, destination: Destination, seconds: float) -> None:
        self._paused[(destination.id, destination.revision)] = time.monotonic() + seconds

    def _post(self, destination: Destination, now: dt.datetime) -> list[Output]:
        settings = PostSettings.from_settings(destination.settings)
        local = now.astimezone(settings.zone)
        day = local.date()
        if not settings.is_working_day(day) or local.time() < settings.post_time:
            return []
        poster = self.connector(destination)
        key = post_key(destination.id, day)
        raw = self._posts.get(OWNER_PARTITION, key)
        record = PostRecord.from_bytes(raw) if raw is not None else None
        if record is None and not self._absences_read(destination, day):
            return []
        text, digest = self.text(destination, settings, day, poster.channel)
        if record is None or record.channel != poster.channel:
            # The intent is committed before any Slack call: a fenced (zombie) owner fails here, and
            # whoever finds an intent without a ts looks for the post before making one.
            self._posts.put(OWNER_PARTITION, key, PostRecord(poster.channel, None, "").to_bytes())
            self._next_tick = 0.0
            return [self.fact(destination, poster.channel, day, Status.PENDING, 0)]
        if not record.automatic_attempt_due(digest, destination.revision, time.time()):
            return []
        return self.attempt(
            destination, poster, settings, day, record, text, digest, trigger=Trigger.AUTOMATIC
        )

    def _absences_read(self, destination: Destination, day: dt.date) -> bool:
        """Whether the day's first post may go: every absence published before it was found due is in
        the table, or it has waited HOLD_LIMIT seconds (then it goes, with a warning)."""
        now = time.monotonic()
        for stale in [held for held in self._held if held[1] < day]:
            del self._held[stale]
        due = self._held.setdefault((destination.id, day), now)
        if self._read.since(due):
            self._held.pop((destination.id, day), None)
            return True
        if now - due >= HOLD_LIMIT:
            log.warning(
                "daily post made before the absences projection caught up: later changes will edit it",
                destination=destination.id,
                day=day.isoformat(),
                waited=round(now - due),
            )
            self._held.pop((destination.id, day), None)
            return True
        self._next_tick = min(self._next_tick, now + HOLD_TICK)
        return False

    def text(
        self, destination: Destination, settings: PostSettings, day: dt.date, channel: str
    ) -> tuple[str, str]:
        """The post of ``day`` as it should read now, and its digest (with the channel)."""
        last = settings.next_working_day(day) if settings.show_tomorrow else day
        events = [e for e in self._absences.on(destination.tenant, day, last) if shown(destination, e)]
        text = render(day, events, settings)
        return text, hashlib.sha256(f"{channel}\x00{text}".encode()).hexdigest()

    def attempt(
        self,
        destination: Destination,
        poster: DigestConnector,
        settings: PostSettings,
        day: dt.date,
        record: PostRecord,
        text: str,
        digest: str,
        *,
        trigger: Trigger,
    ) -> list[Output]:
        """One attempt to make the channel show ``text``; stores the record, returns its fact.

        An operator Retry (``trigger`` RETRY) is final: on failure, Error with nothing scheduled."""
        number = record.attempts + 1
        recorder = CallRecorder(poster.secrets)
        midnight = dt.datetime.combine(day, dt.time(0), tzinfo=settings.zone)
        started, t0 = dt.datetime.now(dt.UTC), time.perf_counter()
        try:
            published = poster.publish(day.isoformat(), text, record.ts, midnight.timestamp(), recorder)
        except ConnectorError as exc:
            error: ConnectorError | None = exc
        except Exception as exc:  # an unexpected client error: the ladder decides, as for deliveries
            error = RetryableError(f"{type(exc).__name__}: {exc}")
        else:
            error = None
        attempt = post_attempt(number, started, (time.perf_counter() - t0) * 1000, recorder, error)
        key = post_key(destination.id, day)
        if error is None:
            done = PostRecord(poster.channel, published.ts, digest, number, 0, Status.SUCCESSFUL.value)
            self._posts.put(OWNER_PARTITION, key, done.to_bytes())
            log.info(
                "slack daily post",
                destination=destination.id,
                day=day.isoformat(),
                action=published.action,
                ts=published.ts,
            )
            fact = self.fact(
                destination,
                poster.channel,
                day,
                Status.SUCCESSFUL,
                number,
                trigger,
                attempt,
                external_id=bounded_external_id(published.ts),  # the message's ts: "Created item"
            )
            return [fact]
        outcome = after_failure(
            record,
            error,
            number,
            self._retry_delays,
            final=trigger is Trigger.RETRY,
            revision=destination.revision,
            now=self._clock(),
            day_ends=midnight + dt.timedelta(days=1),
            wall_now=time.time(),
        )
        self._posts.put(OWNER_PARTITION, key, outcome.record.to_bytes())
        (log.error if outcome.status is Status.ERROR else log.warning)(
            "slack daily post failed",
            destination=destination.id,
            day=day.isoformat(),
            status=outcome.status.value,
            error=error.message,
        )
        return [
            self.fact(
                destination,
                poster.channel,
                day,
                outcome.status,
                number,
                trigger,
                attempt,
                next_retry_at=outcome.next_retry_at,
                error=outcome.error,
            )
        ]

    def fact(
        self,
        destination: Destination,
        channel: str,
        day: dt.date,
        status: Status,
        attempt: int,
        trigger: Trigger = Trigger.AUTOMATIC,
        record: Attempt | None = None,
        **extra: Any,
    ) -> Output:
        """The post's status fact (the channel named as the destination's settings name it)."""
        name = str(destination.settings.get("channel_name") or channel)
        return post_status(
            self._status_topic,
            destination,
            channel,
            name,
            day.isoformat(),
            status,
            attempt,
            trigger=trigger.value.lower(),
            attempt_record=record,
            **extra,
        )

    # -- operator commands --------------------------------------------------------------------
    def command(self, command: Command) -> list[Output]:
        """Retry (one attempt now, final) or Mark as processed (no more automatic attempts that day)
        of a post whose record is kept (:data:`KEEP_RECORDS_DAYS`); a command for an unknown post or
        an earlier channel's post is ignored (logged). Raises ValueError for a malformed post id."""
        bound = log.bind(destination=command.destination_id, command_id=command.command_id)
        day = dt.date.fromisoformat(command.absence_id.removeprefix(SLACK_POST_PREFIX))
        destination = self._destinations.get(command.destination_id)
        raw = self._posts.get(OWNER_PARTITION, post_key(command.destination_id, day))
        if destination is None or raw is None:
            bound.warning("command for an unknown slack post ignored", day=day.isoformat())
            return []
        record = PostRecord.from_bytes(raw)
        channel = record.channel
        if command.delivery_id != slack_post_delivery_id(destination.id, channel, day.isoformat()):
            bound.info("command for an earlier channel's post ignored", day=day.isoformat())
            return []
        key = post_key(destination.id, day)
        if command.kind is CommandKind.MARK_PROCESSED:
            if record.status in (Status.SUCCESSFUL.value, MANUAL):
                return []
            self._posts.put(OWNER_PARTITION, key, replace(record, status=MANUAL, due=0.0).to_bytes())
            return [self.fact(destination, channel, day, Status.SUCCESSFUL, record.attempts, manual=True)]
        try:
            if not destination.enabled:
                raise PermanentError("the destination is disabled: not sent")
            poster = self.connector(destination)
            if poster.channel != channel:
                raise PermanentError(f"the destination now posts in {poster.channel}, not {channel}")
            settings = PostSettings.from_settings(destination.settings)
            text, digest = self.text(destination, settings, day, channel)
        except (ConnectorError, PostSettingsError, SecretDecryptionError) as exc:
            message = exc.message if isinstance(exc, ConnectorError) else str(exc)
            failed = replace(record, status=Status.ERROR.value, due=0.0, revision=destination.revision)
            self._posts.put(OWNER_PARTITION, key, failed.to_bytes())
            bound.error("slack post not retried", error=message)
            return [
                self.fact(
                    destination, channel, day, Status.ERROR, record.attempts, Trigger.RETRY, error=message
                )
            ]
        return self.attempt(destination, poster, settings, day, record, text, digest, trigger=Trigger.RETRY)

    def dead_letter(self, msg: Message, exc: Exception) -> list[Output]:
        """A command the scheduler cannot read goes to ``deliveries.invalid``, with its reason."""
        log.error("slack command dead-lettered", offset=msg.offset(), error=repr(exc)[:500])
        copy = dead_letter_copy(
            self._invalid_topic,
            key=msg.key(),
            value=msg.value(),
            headers=[],
            source=coordinates(msg),
            kind="invalid",
            reason=f"{type(exc).__name__}: {exc}",
            max_bytes=self._max_record,
        )
        return [Output(copy.topic, copy.key, copy.value, list(copy.headers))]

    def connector(self, destination: Destination) -> DigestConnector:
        cached = self._connectors.get(destination.id)
        if cached is not None and cached[0] == destination.revision:
            return cached[1]
        secrets = self._box.decrypt_all(destination.secrets)
        poster = digest_connector_class(destination.kind)(destination, secrets, self._options)
        self._connectors[destination.id] = (destination.revision, poster)
        return poster

    def _sweep(self, now: dt.datetime) -> list[Output]:
        """Once an hour: a post still Pending when its day is over (the owner was down at its due
        time) goes to Error, "the day ended before the post was made"; post records older than
        KEEP_RECORDS_DAYS days are forgotten."""
        if time.monotonic() < self._next_sweep:
            return []
        self._next_sweep = time.monotonic() + 3600.0
        horizon = (now.date() - dt.timedelta(days=KEEP_RECORDS_DAYS)).isoformat()
        outputs: list[Output] = []
        for key, raw in self._posts.items(OWNER_PARTITION):
            if not key.startswith(POST_PREFIX):
                continue
            if key.rsplit("|", 1)[1] < horizon:
                self._posts.delete(OWNER_PARTITION, key)
            else:
                outputs += self._close_if_over(key, PostRecord.from_bytes(raw), now)
        return outputs

    def _close_if_over(self, key: str, record: PostRecord, now: dt.datetime) -> list[Output]:
        destination_id, _, day_text = key.removeprefix(POST_PREFIX).rpartition("|")
        destination = self._destinations.get(destination_id)
        if record.status != Status.PENDING.value or destination is None:
            return []
        try:
            zone = PostSettings.from_settings(destination.settings).zone
            day = dt.date.fromisoformat(day_text)
        except (PostSettingsError, ValueError):
            return []
        if day >= now.astimezone(zone).date():
            return []
        message = "the day ended before the post was made"
        self._posts.put(OWNER_PARTITION, key, replace(record, status=Status.ERROR.value, due=0.0).to_bytes())
        log.error("slack daily post not made", destination=destination_id, day=day_text)
        return [self.fact(destination, record.channel, day, Status.ERROR, record.attempts, error=message)]


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
