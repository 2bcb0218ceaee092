"""What the delivery worker does with one record: :class:`DeliveryHandler`.

A delivery record (``deliveries`` or a retry topic) is admitted or not by the key's state
(:func:`processors.delivery.state.admit`), then attempted: sent through its destination's connector,
within the connector's ``attempt_deadline``; the outcome is a status event on ``delivery-status``,
maybe a retry record (:func:`processors.delivery.retry_policy.next_step`), then the key's new state.

Commands: RETRY (of any delivery of a key) makes one attempt now of the key's *latest* delivery,
trigger RETRY, ``final``: nothing is scheduled if it fails (an automatic retry already pending
stays). MARK_PROCESSED of the latest delivery makes it SUCCESSFUL (``manual``) and cancels its
pending retries; of an older delivery it is ignored (that one is SUPERSEDED already). A command on a
Slack daily post (absence id ``slack-post:<day>``) is forwarded, acknowledged, to ``slack-commands``:
the Slack scheduler carries it out (:mod:`processors.slack_followup`).

Every attempt first waits for the destination's rate limit, if it has one
(:mod:`processors.delivery.rate_limit`), in the lane of its key.

Destinations are re-read at send time (as Svix does): a deleted destination makes the delivery
SUPERSEDED (there is nothing left to converge); a disabled one makes it ERROR "destination disabled"
with no automatic retry (an operator may Retry once it is enabled again).

Guarantees: a record's outputs (status, retry record) are acknowledged by Kafka before the key's
state says the record is handled, and :meth:`DeliveryHandler.handle` returns only when all of it is
acknowledged: a crash before means the record is handled again, with the same status ids
(:func:`status_seq`), and a retry record never goes missing behind a state that expects it. A
record the worker cannot read goes to ``deliveries.invalid`` with its reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import structlog

from connectors.base import CallRecorder
from connectors.exceptions import ConnectorError, RetryableError
from processors.delivery.connector_cache import ConnectorCache
from processors.delivery.rate_limit import RateLimits
from processors.delivery.retry_policy import RetryAt, next_step
from processors.delivery.state import MANUAL, Drop, KeyState, Send, Stale, admit, held_after
from schemas.codec import codec_for
from schemas.delivery import (
    NOT_SENT_DISABLED,
    SLACK_POST_PREFIX,
    Attempt,
    Command,
    CommandKind,
    Delivery,
    DeliveryStatus,
    Status,
    Trigger,
    bounded_external_id,
    now_utc,
)
from schemas.errors import SchemaError
from streams.async_producer import AsyncProducer
from streams.deadletter import dead_letter_copy
from streams.delay import due_at_header
from streams.destinations import DestinationTable
from streams.settings import Settings
from streams.state import DirectStore
from streams.topics import Topics

log = structlog.get_logger(__name__)

UNKNOWN_DESTINATION_WAIT = 10.0
"""At most this many seconds a record waits for a destination its worker has neither read nor
seen deleted (the table answers as soon as it has read to the topic's end, usually within ms;
this bounds a slow broker), before it is taken for deleted (SUPERSEDED)."""

_STATUS_SEQ = {Status.SUCCESSFUL: 1, Status.PENDING: 2, Status.ERROR: 3, Status.SUPERSEDED: 4}


def status_seq(attempt: int, status: Status, manual: bool = False) -> int:
    """Deterministic per (attempt, status): a record handled twice yields the same status id."""
    return attempt * 10 + (5 if manual else _STATUS_SEQ[status])


def attempt_record(
    number: int, started: dt.datetime, duration_ms: float, recorder: CallRecorder
) -> Attempt | None:
    """The first call as request/response, every call summarised in ``calls``."""
    if not recorder.calls:
        return None
    first = recorder.calls[0]
    return Attempt(
        number=number,
        started_at=started,
        duration_ms=duration_ms,
        request_method=first.method,
        request_url=first.url,
        request_headers=first.request_headers,
        request_body=first.request_body,
        response_status=first.response_status,
        response_headers=first.response_headers,
        response_body=first.response_body,
        error=first.error,
        calls=[
            {
                "method": c.method,
                "url": c.url,
                "status": "" if c.response_status is None else str(c.response_status),
                "duration_ms": f"{c.duration_ms:.1f}",
                "error": c.error or "",
            }
            for c in recorder.calls
        ],
    )


@dataclass(frozen=True)
class Admitted:
    """An admitted record, copied out of the consumer's message (which belongs to the poll thread)."""

    topic: str
    partition: int
    offset: int
    key: str
    value: bytes | None
    command: bool = False
    """A ``Command`` read from the replay lane (header ``absync-command``); ``commands`` is by topic."""


class DeliveryHandler:
    """Handles one record at a time per key (the worker's lanes order them); event-loop only."""

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        store: DirectStore,
        destinations: DestinationTable,
        connectors: ConnectorCache,
        producer: AsyncProducer,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.store = store
        self.destinations = destinations
        self.connectors = connectors
        self.producer = producer
        self.rate_limits = rate_limits or RateLimits()
        self._stage_of = {topic: i + 1 for i, topic in enumerate(topics.retries)}

    async def handle(self, record: Admitted) -> None:
        """Handles the record, or dead-letters it when it cannot be read. Raises only when the worker
        must stop (Kafka refused an output, or a bug): the record is then handled again later."""
        try:
            if record.command or record.topic == self.topics.commands:
                await self._on_command(record)
            else:
                await self._on_delivery(record)
        except (SchemaError, KeyError, TypeError, ValueError) as exc:  # permanent for this record
            await self._dead_letter(record, exc)

    async def _dead_letter(self, record: Admitted, exc: Exception) -> None:
        """A record the worker cannot read goes to ``deliveries.invalid`` (streams/deadletter.py)."""
        reason = f"{type(exc).__name__}: {exc}"
        log.error(
            "unreadable record dead-lettered", topic=record.topic, offset=record.offset, error=reason[:500]
        )
        copy = dead_letter_copy(
            self.topics.deliveries_invalid,
            key=record.key.encode(),
            value=record.value,
            headers=[],
            source=(record.topic, record.partition, record.offset),
            kind="decode" if isinstance(exc, SchemaError) else "invalid",
            reason=reason,
            max_bytes=self.settings.max_record_bytes,
        )
        await self.producer.send(
            copy.topic, (copy.key or b"").decode(errors="replace"), copy.value, headers=list(copy.headers)
        )

    async def _on_delivery(self, record: Admitted) -> None:
        encoded = record.value or b""
        delivery = Delivery.from_avro(codec_for("Delivery").decode(encoded))
        admission = admit(
            self._state(record.partition, record.key), delivery, self._stage_of.get(record.topic, 0), encoded
        )
        if isinstance(admission, Stale):
            await self._status(delivery, Status.SUPERSEDED, delivery.attempt, error="a newer version exists")
            return
        if isinstance(admission, Drop):
            log.debug(admission.reason, delivery_id=delivery.delivery_id)
            return
        assert isinstance(admission, Send)
        if admission.supersedes is not None:  # the previous latest will never be sent: say so
            previous = admission.supersedes
            await self._status(
                previous.delivery(), Status.SUPERSEDED, previous.attempts, error="a newer version exists"
            )
        if admission.save_first:
            # Durable before the send: were the worker killed after the send, an older delivery's
            # retry must find this one as the latest, or it would overwrite it at the destination.
            await self._save(record.partition, record.key, admission.state)
        await self._attempt(record.partition, admission.state, delivery)

    async def _on_command(self, record: Admitted) -> None:
        command = Command.from_avro(codec_for("Command").decode(record.value))
        if command.absence_id.startswith(SLACK_POST_PREFIX):
            # A Slack daily post is followed by its scheduler, the one owner of the post records.
            await self.producer.send(self.topics.slack_commands, record.key, record.value)
            return
        state = self._state(record.partition, record.key)
        if state is None:
            log.warning("command for an unknown delivery ignored", command_id=command.command_id)
            return
        latest = state.delivery()
        if command.kind is CommandKind.MARK_PROCESSED:
            if command.delivery_id != state.delivery_id:
                log.info(
                    "mark as processed of a superseded delivery ignored", delivery_id=command.delivery_id
                )
                return
            state.next_stage, state.status = 0, MANUAL
            state.held_email = held_after(latest)  # the operator says the destination holds it
            await self._conclude(
                record.partition, state, latest, Status.SUCCESSFUL, state.attempts, manual=True
            )
            return
        # RETRY: one attempt now of the latest state of the key, nothing scheduled after it.
        retry = latest.evolve(trigger=Trigger.RETRY, final=True, attempt=state.attempts, due_at=now_utc())
        await self._attempt(record.partition, state, retry)

    async def _attempt(self, partition: int, state: KeyState, delivery: Delivery) -> None:
        """One attempt: send, then record the outcome (state, status, maybe a retry record)."""
        number = max(delivery.attempt, state.attempts) + 1  # an operator Retry may have come between
        # A destination this worker's table has not read yet is not a deleted one: the fan-out's
        # table (or the operator's publish) can be a moment ahead; the table reads to the topic's
        # end before answering (DestinationTable.wait_for).
        destination = await self.destinations.wait_for(delivery.destination_id, UNKNOWN_DESTINATION_WAIT)
        if destination is None:
            state.next_stage, state.status = 0, Status.SUPERSEDED.value
            await self._conclude(
                partition,
                state,
                delivery,
                Status.SUPERSEDED,
                delivery.attempt,
                error="the destination was deleted",
            )
            return
        if not destination.enabled:
            state.next_stage, state.status = 0, Status.ERROR.value
            await self._conclude(
                partition,
                state,
                delivery,
                Status.ERROR,
                delivery.attempt,
                error=NOT_SENT_DISABLED,
            )
            return
        # The destination's rate limit, before every attempt (live, retry, operator Retry, resync):
        # the wait is this lane's alone (the loop and other destinations go on), outside the attempt
        # deadline, and the record stays in flight (its offset uncommitted) until it is handled.
        await self.rate_limits.wait(destination.id, destination.rate_limit)
        recorder = CallRecorder()
        started, t0 = now_utc(), time.perf_counter()
        error: ConnectorError | None = None
        external_id: str | None = None
        deadline = 0.0
        limit = asyncio.timeout(None)
        try:
            async with limit:
                connector = await self.connectors.get(destination)  # no I/O but opening clients
                recorder = CallRecorder(connector.secrets)
                deadline = connector.attempt_deadline
                limit.reschedule(asyncio.get_running_loop().time() + deadline)
                outcome = await connector.deliver(delivery.evolve(held_email=state.held_email), recorder)
                external_id = bounded_external_id(outcome.external_id)
        except ConnectorError as exc:
            error = exc
        except TimeoutError as exc:
            error = RetryableError(
                f"no complete answer within the attempt deadline of {deadline:g} s"
                if limit.expired()
                else f"{type(exc).__name__}: {exc}"
            )
        except Exception as exc:  # a connector bug or an unexpected client error: try again later
            error = RetryableError(f"{type(exc).__name__}: {exc}")
        duration_ms = (time.perf_counter() - t0) * 1000
        recorder.fail_open_calls(str(error) if error else "no answer")
        attempt = attempt_record(number, started, duration_ms, recorder)
        state.attempts = max(state.attempts, number)
        if error is None:
            state.next_stage, state.status = 0, Status.SUCCESSFUL.value
            state.held_email = held_after(delivery)
            await self._conclude(
                partition,
                state,
                delivery,
                Status.SUCCESSFUL,
                number,
                attempt_record=attempt,
                external_id=external_id,
            )
            return
        step = next_step(error, delivery, self.settings, now=now_utc())
        if isinstance(step, RetryAt):
            state.next_stage, state.status = step.stage, Status.PENDING.value
            await self._conclude(
                partition,
                state,
                delivery,
                Status.PENDING,
                number,
                retry=delivery.evolve(stage=step.stage, attempt=number, due_at=step.due_at),
                next_retry_at=step.due_at,
                error=error.message,
                attempt_record=attempt,
            )
            return
        if not step.keeps_pending_retry:
            state.next_stage = 0
        state.status = Status.ERROR.value
        await self._conclude(
            partition, state, delivery, Status.ERROR, number, error=error.message, attempt_record=attempt
        )

    async def _conclude(
        self,
        partition: int,
        state: KeyState,
        delivery: Delivery,
        status: Status,
        attempt: int,
        *,
        retry: Delivery | None = None,
        manual: bool = False,
        **extra: Any,
    ) -> None:
        """Writes the status event and the retry record (if any), then the key's state, which says the
        record is handled: were the worker to die before, the record would be handled again (and a
        retry record never goes missing behind a state that expects it)."""
        outputs = [self._status(delivery, status, attempt, manual=manual, **extra)]
        if retry is not None:
            outputs.append(
                self.producer.send(
                    self.topics.retries[retry.stage - 1],
                    retry.key,
                    codec_for("Delivery").encode(retry.to_avro()),
                    partition=partition,
                    headers=[due_at_header(retry.due_at)],
                )
            )
        await asyncio.gather(*outputs)
        await self._save(partition, delivery.key, state)

    # -- state and status ---------------------------------------------------------------------

    def _state(self, partition: int, key: str) -> KeyState | None:
        raw = self.store.get(partition, key)
        return KeyState.from_bytes(raw) if raw is not None else None

    async def _save(self, partition: int, key: str, state: KeyState) -> None:
        await self.store.put(partition, key, state.to_bytes(), producer=self.producer)

    async def _status(
        self, delivery: Delivery, status: Status, attempt: int, *, manual: bool = False, **extra: Any
    ) -> None:
        event = DeliveryStatus.for_delivery(
            delivery, status, status_seq(attempt, status, manual), attempt=attempt, manual=manual, **extra
        )
        await self.producer.send(
            self.topics.status, delivery.delivery_id, codec_for("DeliveryStatus").encode(event.to_avro())
        )
        # Every status is in delivery-status already; the log says only what needs attention.
        (log.warning if status is Status.ERROR else log.debug)(
            "delivery status",
            delivery_id=delivery.delivery_id,
            destination=delivery.destination_id,
            status=status.value,
            attempt=attempt,
            manual=manual,
        )
