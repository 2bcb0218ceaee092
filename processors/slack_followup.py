"""The Slack daily post followed as a delivery: its record, its retry ladder and its status facts.

A post (destination, channel, day) is one delivery of the follow-up, with the same bookkeeping as a
per-change delivery: ``DeliveryStatus`` facts on ``delivery-status`` (written in the scheduler's Kafka
transaction, with the post record that says what was done), so the projection, the API and the
console show it unchanged. Its delivery id is
:func:`schemas.delivery.slack_post_delivery_id` (deterministic), its absence id ``slack-post:<day>``
(:func:`schemas.delivery.slack_post_absence_id`), its operation UPSERT (the day's message is posted
or updated in place), its change ``daily_post``; the "employee" columns name the channel.

The retry ladder is the delivery worker's (``ABSYNC_RETRY_DELAYS``, 5 min, 15 min, 1 h, 24 h), applied
by the scheduler itself rather than through the retry topics: a ``Delivery`` carries one absence
event, and the post is a whole day's text that must be rendered from the absences *at the time of the
attempt*. After a retryable failure (5xx, transport error, ``ratelimited`` with its ``Retry-After``
as a floor) the record says when the next automatic attempt is due (status Pending); after the last
stage, or when the next one would fall after the day's local midnight (a post is never made on a
later day), it is Error. A permanent failure (``invalid_auth``, ``not_in_channel``...) is Error at
once; no automatic attempt is made again for that day until the destination changes (a new revision)
or an operator retries. Mark as processed stops automatic attempts of that day's post.

Idempotence does not depend on the ladder: every attempt goes through
:meth:`connectors.slack.SlackConnector.publish`, which updates the known (or found) message of the
day, so a retry never posts twice.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, replace

from connectors.base import CallRecorder
from connectors.exceptions import BackpressureError, ConnectorError, RetryableError
from processors.delivery.handler import attempt_record, status_seq
from schemas.codec import codec_for
from schemas.delivery import (
    Attempt,
    DeliveryStatus,
    Operation,
    Status,
    slack_post_absence_id,
    slack_post_delivery_id,
)
from schemas.destination import Destination
from streams.output import Output

MANUAL = "MANUAL"
"""Record status of a post marked as processed by an operator (shown SUCCESSFUL, manual)."""
SENDING_METHODS = ("chat.postMessage", "chat.update")


@dataclass(frozen=True)
class PostRecord:
    """The day's post of one destination, as the scheduler's store keeps it.

    ``ts`` None: the intent is declared, the message not known to be made. ``digest`` is the digest of
    the text Slack last accepted ("" before). ``attempts`` counts attempts (automatic and operator),
    ``stage`` the automatic retries since the last success, ``due`` (epoch seconds) the earliest next
    automatic attempt, ``revision`` the destination's revision when the post went to Error.
    """

    channel: str
    ts: str | None
    digest: str
    attempts: int = 0
    stage: int = 0
    status: str = Status.PENDING.value
    due: float = 0.0
    revision: int = 0

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "channel": self.channel,
                "ts": self.ts,
                "digest": self.digest,
                "attempts": self.attempts,
                "stage": self.stage,
                "status": self.status,
                "due": self.due,
                "revision": self.revision,
            }
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> PostRecord:
        """Also reads the records written before posts were followed (channel, ts, digest only)."""
        data = json.loads(raw)
        ts = data["ts"]
        made = Status.SUCCESSFUL.value if ts and data.get("digest") else Status.PENDING.value
        return cls(
            channel=str(data["channel"]),
            ts=ts,
            digest=str(data["digest"]),
            attempts=int(data.get("attempts", 0)),
            stage=int(data.get("stage", 0)),
            status=str(data.get("status") or made),
            due=float(data.get("due", 0.0)),
            revision=int(data.get("revision", 0)),
        )

    def automatic_attempt_due(self, digest: str, revision: int, now: float) -> bool:
        """Whether the scheduler should try now, on its own, to make the channel show ``digest``."""
        if self.status == MANUAL:
            return False
        if self.status == Status.ERROR.value and self.revision == revision:
            return False
        if self.status == Status.SUCCESSFUL.value and self.digest == digest:
            return False
        return now >= self.due


@dataclass(frozen=True)
class Outcome:
    """After an attempt: the record to store and the fact to write."""

    record: PostRecord
    status: Status
    next_retry_at: dt.datetime | None = None
    error: str | None = None


def after_failure(
    record: PostRecord,
    error: ConnectorError,
    number: int,
    delays: tuple[float, ...],
    *,
    final: bool,
    revision: int,
    now: dt.datetime,
    day_ends: dt.datetime,
    wall_now: float,
) -> Outcome:
    """The retry ladder for a post (pure): Pending with the next due time, or Error.

    ``final`` (an operator Retry): Error, nothing scheduled. A retryable error goes to the next stage
    (``Retry-After`` a floor) unless the ladder is exhausted or ``now`` (the scheduler's clock) plus
    the delay reaches ``day_ends``. The due time is ``wall_now`` (epoch seconds) plus the delay.
    """
    stage = record.stage + 1
    failed = replace(record, attempts=number, status=Status.ERROR.value, due=0.0, revision=revision)
    if final or not isinstance(error, RetryableError) or stage > len(delays):
        return Outcome(failed, Status.ERROR, error=error.message)
    delay = delays[stage - 1]
    if isinstance(error, BackpressureError) and error.retry_after:
        delay = max(delay, error.retry_after)
    if now + dt.timedelta(seconds=delay) >= day_ends:
        return Outcome(failed, Status.ERROR, error=f"{error.message} (no retry before the day ends)")
    due = wall_now + delay
    pending = replace(record, attempts=number, stage=stage, status=Status.PENDING.value, due=due)
    return Outcome(
        pending, Status.PENDING, next_retry_at=dt.datetime.fromtimestamp(due, dt.UTC), error=error.message
    )


def post_attempt(
    number: int,
    started: dt.datetime,
    duration_ms: float,
    recorder: CallRecorder,
    failure: ConnectorError | None = None,
) -> Attempt | None:
    """The attempt as the follow-up shows it: request and answer of the call that sent the text
    (``chat.postMessage`` or ``chat.update``; a history lookup before it is in ``calls``), and the
    failure's message as its error: Slack refuses at HTTP 200 (``ok: false``), which the status alone
    would show as a success."""
    attempt = attempt_record(number, started, duration_ms, recorder)
    if attempt is None:
        return None
    if failure is not None and attempt.error is None:
        attempt = replace(attempt, error=failure.message)
    sending = [c for c in recorder.calls if c.url.rstrip("/").rsplit("/", 1)[-1] in SENDING_METHODS]
    if not sending:
        return attempt
    main = sending[-1]
    return replace(
        attempt,
        request_method=main.method,
        request_url=main.url,
        request_headers=main.request_headers,
        request_body=main.request_body,
        response_status=main.response_status,
        response_headers=main.response_headers,
        response_body=main.response_body,
        error=main.error or (failure.message if failure is not None else None),
    )


def post_status(
    status_topic: str,
    destination: Destination,
    channel: str,
    channel_name: str,
    day: str,
    status: Status,
    attempt: int,
    *,
    trigger: str = "automatic",
    manual: bool = False,
    next_retry_at: dt.datetime | None = None,
    error: str | None = None,
    attempt_record: Attempt | None = None,
    occurred_at: dt.datetime | None = None,
    external_id: str | None = None,
) -> Output:
    """The ``DeliveryStatus`` fact of a post, as an output of the scheduler's transaction. Its status id
    is deterministic per (attempt, status), so a transaction replayed after a crash repeats it."""
    delivery_id = slack_post_delivery_id(destination.id, channel, day)
    fact = DeliveryStatus(
        status_id=f"{delivery_id}:{status_seq(attempt, status, manual)}",
        delivery_id=delivery_id,
        destination_id=destination.id,
        tenant=destination.tenant,
        absence_id=slack_post_absence_id(day),
        version=1,
        change="daily_post",
        operation=Operation.UPSERT.value,
        employee_id=channel,
        employee_name=f"Slack daily post in {channel_name}",
        employee_email=None,
        start_date=day,
        end_date=day,
        status=status,
        trigger=trigger,
        attempt=attempt,
        occurred_at=occurred_at or dt.datetime.now(dt.UTC),
        manual=manual,
        next_retry_at=next_retry_at,
        error=error,
        attempt_record=attempt_record,
        external_id=external_id,
    )
    value = codec_for("DeliveryStatus").encode(fact.to_avro())
    return Output(status_topic, delivery_id.encode(), value)
