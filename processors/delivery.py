"""The delivery worker: sends each delivery through its connector, retries, converges.

One consumer group reads ``deliveries``, every retry topic and ``commands``. They are co-partitioned
(key ``<destination>|<absence>``, ``range`` assignor), so every record of one key reaches one worker.

Threads and tasks:

- the *poll thread* (a thread of its own, not asyncio's default executor) owns the consumer: it polls, gates the retry topics (:class:`DelayGate`: a record
  is never admitted before its due time), pauses/resumes partitions, commits, and hands each admitted
  record to the event loop;
- the *event loop* runs one ordered lane per key (:class:`streams.lanes.KeyLanes`): records of one key are handled
  one after the other, keys run in parallel, bounded by ``settings.delivery_concurrency`` and by a
  per-destination share of it (:class:`streams.slots.GroupSlots`: at most half of what the other
  destinations leave), so hanging destinations, even several, never take every slot; it also serves
  the producer's acknowledgements (:class:`streams.async_producer.AsyncProducer`);
- each connector's blocking client library runs on threads of that destination
  (:mod:`connectors.executor`), and one attempt has a total deadline (``attempt_deadline``): a
  destination that hangs or drips its answer holds a lane only that long, then the delivery goes to
  the retry ladder.

Progress: an offset is committed only when every record before it in its partition is done (its
outputs acknowledged by Kafka): a crash re-delivers only unfinished work. Sending is at-least-once;
connectors are idempotent, so a repeat has no second effect.

Convergence: the state store (changelog ``delivery-state``, restored on assignment) keeps per key
the latest delivery (the record itself), its attempts and which retry stage is expected next. A new
latest delivery is written to the changelog (acknowledged) *before* it is sent, so after a crash an
older delivery's retry can never overwrite it. A delivery older than the latest is SUPERSEDED and
never sent (the previous latest, if it was pending or in error, is marked SUPERSEDED when the newer
one arrives); a retry record that is not the expected next stage of the latest delivery (a
duplicate, or cancelled by a success or by Mark as processed) is dropped. So within one destination
the changes of one absence go out in order, and only the latest state goes out. (A request that timed
out on our side may still be applied late by its receiver; the ``version`` in every body lets a
receiver ignore it.)

Commands: RETRY (of any delivery of a key) makes one attempt now of the key's *latest* delivery,
trigger RETRY, ``final``: nothing is scheduled if it fails (an automatic retry already pending
stays). MARK_PROCESSED of the latest delivery makes it SUCCESSFUL (``manual``) and cancels its
pending retries; of an older delivery it is ignored (that one is SUPERSEDED already).

Destinations are re-read at send time (as Svix does): a deleted destination makes the delivery
SUPERSEDED (there is nothing left to converge); a disabled one makes it ERROR "destination disabled"
with no automatic retry (an operator may Retry once it is enabled again).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import functools
import json
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from connectors.base import CallRecorder, Connector, ConnectorOptions
from connectors.exceptions import BackpressureError, ConfigurationError, ConnectorError, RetryableError
from connectors.registry import connector_class
from processors import ProcessorError
from schemas.codec import codec_for
from schemas.delivery import (
    Attempt,
    Command,
    CommandKind,
    Delivery,
    DeliveryStatus,
    Status,
    Trigger,
    now_utc,
)
from schemas.destination import Destination
from schemas.errors import SchemaError
from streams.async_producer import AsyncProducer
from streams.deadletter import dead_letter_copy
from streams.delay import DelayGate, Partition, due_at_header
from streams.destinations import DestinationTable
from streams.kafka import group_id, make_consumer, make_producer
from streams.lanes import KeyLanes
from streams.offsets import OffsetTracker
from streams.records import coordinates
from streams.secrets import SecretBox, SecretDecryptionError
from streams.settings import Settings
from streams.state import DirectStore
from streams.threads import run_in_thread
from streams.topics import Topics

log = structlog.get_logger(__name__)

COMMIT_INTERVAL = 1.0
"""Seconds between offset commits of finished work."""
BUFFER_PER_SLOT = 50
"""Records buffered per concurrency slot before intake pauses (bounded memory)."""
DESTINATION_SHARE = 2
"""A destination may use at most 1/DESTINATION_SHARE of the concurrency slots the other destinations
leave: one hanging destination leaves half to everyone else, two leave a quarter or more."""

MANUAL = "MANUAL"
"""Key state status of a delivery an operator marked as processed."""


class DeliveryWorkerError(ProcessorError):
    """The worker cannot go on (its poll loop or a record's handling failed unexpectedly)."""


# -- connectors -----------------------------------------------------------------------------------


class ConnectorCache:
    """One set-up connector per destination, rebuilt when its revision changes.

    The old connector is closed at once: a call it still has in flight fails and is retried.
    """

    def __init__(self, box: SecretBox, options: ConnectorOptions) -> None:
        self._box = box
        self._options = options
        self._items: dict[str, tuple[int, Connector]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, destination: Destination) -> Connector:
        """Raises a ConnectorError (ConfigurationError) when the destination cannot be built."""
        async with self._locks.setdefault(destination.id, asyncio.Lock()):
            cached = self._items.get(destination.id)
            if cached is not None and cached[0] == destination.revision:
                return cached[1]
            if cached is not None:
                del self._items[destination.id]
                await cached[1].close()
                cached[1].release_threads()
            try:
                secrets = self._box.decrypt_all(destination.secrets)
            except SecretDecryptionError as exc:
                raise ConfigurationError(str(exc)) from None
            connector = connector_class(destination.kind)(destination, secrets, self._options)
            await connector.setup()
            self._items[destination.id] = (destination.revision, connector)
            return connector

    async def close(self) -> None:
        items, self._items = self._items, {}
        for _, connector in items.values():
            await connector.close()
            connector.release_threads()


# -- state ----------------------------------------------------------------------------------------


@dataclass
class KeyState:
    """What the worker remembers per key (destination, absence)."""

    record: str
    """The latest delivery of the key (Avro, base64): what a Retry command re-sends."""
    delivery_id: str
    version: int
    attempts: int
    next_stage: int
    """The retry stage expected next for the latest delivery; 0 = none pending."""
    status: str

    def to_bytes(self) -> bytes:
        """Field by field: ``asdict`` (a recursive copy) showed in the profile, twice per delivery."""
        return json.dumps(
            {
                "record": self.record,
                "delivery_id": self.delivery_id,
                "version": self.version,
                "attempts": self.attempts,
                "next_stage": self.next_stage,
                "status": self.status,
            }
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyState:
        return cls(**json.loads(data))

    @classmethod
    def of(cls, delivery: Delivery, encoded: bytes) -> KeyState:
        """``encoded``: the delivery's Avro record as received (encoding it again cost CPU per delivery)."""
        record = base64.b64encode(encoded).decode()
        return cls(record, delivery.delivery_id, delivery.version, delivery.attempt, 0, Status.PENDING.value)

    def delivery(self) -> Delivery:
        return Delivery.from_avro(codec_for("Delivery").decode(base64.b64decode(self.record)))


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


# -- the worker -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    """An admitted record, copied out of the consumer's message (which belongs to the poll thread)."""

    topic: str
    partition: int
    offset: int
    key: str
    value: bytes | None


class DeliveryWorker:
    """The ``delivery`` component of :mod:`absync.service` (see the module docstring)."""

    name = "delivery"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings)
        self._stage_of = {topic: i + 1 for i, topic in enumerate(self.topics.retries)}
        self.store = DirectStore(settings, self.topics.delivery_state)
        self.destinations = DestinationTable(settings)
        self.connectors = ConnectorCache(
            SecretBox.from_settings(settings), ConnectorOptions.from_settings(settings)
        )
        concurrency = max(1, settings.delivery_concurrency)
        self.lanes: KeyLanes | None = None
        self._concurrency = concurrency
        self._max_buffered = concurrency * BUFFER_PER_SLOT
        self.tracker = OffsetTracker()
        self._producer: AsyncProducer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._halt = threading.Event()
        self._failure: BaseException | None = None
        self._failed = asyncio.Event()

    # -- component ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self.lanes = KeyLanes(self._concurrency, DESTINATION_SHARE)
        self.destinations.start()
        self._producer = AsyncProducer(make_producer(self.settings), self._loop)
        try:
            await run_in_thread(self.destinations.wait_ready, 60.0, name="delivery-destinations-ready")
            poller = asyncio.create_task(run_in_thread(self._poll_loop, name="delivery-poll"))
            stopper = asyncio.create_task(stop.wait())
            failer = asyncio.create_task(self._failed.wait())
            await asyncio.wait([poller, stopper, failer], return_when=asyncio.FIRST_COMPLETED)
            self._halt.set()
            stopper.cancel()
            failer.cancel()
            await poller
        finally:
            await self.connectors.close()
            self._producer.close()
            self.destinations.close()
        if self._failure is not None:
            raise DeliveryWorkerError(f"delivery worker failed: {self._failure!r}") from self._failure

    def _fail(self, exc: BaseException) -> None:
        """Stops the worker: unfinished work stays uncommitted and is redone after a restart."""
        log.error("delivery worker failing", error=repr(exc))
        if self._failure is None:
            self._failure = exc
        self._failed.set()

    # -- poll thread --------------------------------------------------------------------------

    def _poll_loop(self) -> None:
        gate = DelayGate(self.topics.retries, _body_due_ms)
        assigned: set[Partition] = set()
        paused: set[Partition] = set()
        rewind: dict[Partition, int] = {}
        # A short fetch wait: a resumed delay partition joins the next fetch request at once.
        consumer = make_consumer(
            self.settings, group_id(self.settings, "delivery"), **{"fetch.wait.max.ms": 50}
        )

        def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
            # librdkafka keeps a partition's pause across a rebalance (librdkafka#1849): a retry
            # partition paused before it was revoked would come back paused for good. Everything
            # assigned starts running; the gate pauses again what is not due.
            with contextlib.suppress(KafkaException):
                c.resume(partitions)
            assigned.update((tp.topic, tp.partition) for tp in partitions)
            self.store.restore({tp.partition for tp in partitions if tp.topic == self.topics.deliveries})
            log.info("delivery partitions assigned", count=len(partitions))

        def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
            revoked = {(tp.topic, tp.partition) for tp in partitions}
            self._call_in_loop(self._drain())
            self._commit(c, revoked)
            forget(revoked)

        def on_lost(_: Consumer, partitions: list[TopicPartition]) -> None:
            self._call_in_loop(self._drain())
            forget({(tp.topic, tp.partition) for tp in partitions})

        def forget(partitions: set[Partition]) -> None:
            with contextlib.suppress(KafkaException):  # see on_assign: never leave a pause behind
                _apply_pauses(consumer, paused, paused - partitions)
            self.tracker.forget(partitions)
            gate.forget(partitions)
            assigned.difference_update(partitions)
            paused.difference_update(partitions)
            for partition in partitions:
                rewind.pop(partition, None)
            self.store.drop({p for t, p in partitions if t == self.topics.deliveries})

        try:
            consumer.subscribe(
                [self.topics.deliveries, *self.topics.retries, self.topics.commands],
                on_assign=on_assign,
                on_revoke=on_revoke,
                on_lost=on_lost,
            )
            last_commit = time.monotonic()
            throttled = False
            while not self._halt.is_set():
                rewind.update(gate.due_partitions())
                in_flight = self.tracker.in_flight()
                throttled = in_flight >= self._max_buffered or (
                    throttled and in_flight > self._max_buffered // 2
                )
                wanted = (assigned if throttled else set()) | (gate.gated & assigned)
                _apply_pauses(consumer, paused, wanted)
                for resumed in [p for p in rewind if p not in paused]:  # active: back to its head
                    consumer.seek(TopicPartition(*resumed, rewind.pop(resumed)))
                # Wait for one record, then take what is already there: consume(500, timeout) would
                # wait the whole timeout for 500 records and add that wait to every record's latency.
                first = consumer.consume(1, gate.seconds_to_next(0.2))
                admitted: list[_Input] = []
                for msg in first + (consumer.consume(499, 0) if first else []):
                    if msg.error() is not None:
                        log.warning("delivery consumer error", error=str(msg.error()))
                        continue
                    if not gate.admit(msg):
                        continue
                    topic, partition, offset = coordinates(msg)
                    rewind.pop((topic, partition), None)  # its head is back: no seek pending
                    self.tracker.started((topic, partition), offset)
                    admitted.append(
                        _Input(
                            topic, partition, offset, (msg.key() or b"").decode(errors="replace"), msg.value()
                        )
                    )
                if admitted:  # one wake-up of the event loop per batch, not per record
                    self._in_loop(self._dispatch, admitted)
                if time.monotonic() - last_commit >= COMMIT_INTERVAL:
                    self._commit(consumer, assigned)
                    last_commit = time.monotonic()
            self._call_in_loop(self._drain())
            self._commit(consumer, assigned)
        except BaseException as exc:
            self._in_loop(self._fail, exc)
            raise
        finally:
            consumer.close()

    def _commit(self, consumer: Consumer, partitions: set[Partition]) -> None:
        """Commits what is done. An idle partition of a main topic commits the consumer's position,
        past any transaction marker; a delay partition never does (the gate rewinds those)."""
        idle = {p for p in self.tracker.idle(partitions) if p[0] not in self._stage_of}
        positions = {
            (tp.topic, tp.partition): tp.offset
            for tp in consumer.position([TopicPartition(t, p) for t, p in idle])
            if tp.topic is not None and tp.offset >= 0
        }
        offsets = self.tracker.committable(partitions, positions)
        if not offsets:
            return
        try:
            consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
            )
        except KafkaException as exc:
            log.warning("offset commit failed (the work is redone after a restart)", error=str(exc))

    def _in_loop(self, fn: Callable[..., object], *args: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn, *args)

    def _call_in_loop(self, coro: Awaitable[None]) -> None:
        """Runs a coroutine in the event loop and waits for it (from the poll thread)."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(_as_coroutine(coro), self._loop).result()

    async def _drain(self) -> None:
        assert self.lanes is not None
        await self.lanes.drain()

    # -- event loop ---------------------------------------------------------------------------

    def _dispatch(self, records: list[_Input]) -> None:
        assert self.lanes is not None
        for record in records:
            destination_id = record.key.partition("|")[0]
            self.lanes.submit(record.key, destination_id, functools.partial(self._handle, record))

    async def _handle(self, record: _Input) -> None:
        try:
            if record.topic == self.topics.commands:
                await self._on_command(record)
            else:
                await self._on_delivery(record)
        except (SchemaError, KeyError, TypeError, ValueError) as exc:  # permanent for this record
            try:
                await self._dead_letter(record, exc)
            except Exception as failure:
                self._fail(failure)
                return
        except Exception as exc:
            self._fail(exc)
            return
        self.tracker.done((record.topic, record.partition), record.offset)

    async def _dead_letter(self, record: _Input, exc: Exception) -> None:
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
        await self._producer_().send(
            copy.topic, (copy.key or b"").decode(errors="replace"), copy.value, headers=list(copy.headers)
        )

    async def _on_delivery(self, record: _Input) -> None:
        encoded = record.value or b""
        delivery = Delivery.from_avro(codec_for("Delivery").decode(encoded))
        state = self._state(record.partition, record.key)
        stage = self._stage_of.get(record.topic, 0)
        if stage == 0:
            if state is not None and delivery.version < state.version:
                await self._status(
                    delivery, Status.SUPERSEDED, delivery.attempt, error="a newer version exists"
                )
                return
            if state is not None and state.delivery_id != delivery.delivery_id:
                await self._supersede_previous(state)
            state = KeyState.of(delivery, encoded)
            # Durable before the send: were the worker killed after the send, an older delivery's
            # retry must find this one as the latest, or it would overwrite it at the destination.
            await self._save(record.partition, record.key, state)
        elif state is None:  # state lost (never expected): the retry itself is the best knowledge
            state = KeyState.of(delivery, encoded)
            state.next_stage = stage
        elif state.delivery_id != delivery.delivery_id:
            log.debug("retry of a superseded delivery dropped", delivery_id=delivery.delivery_id)
            return
        elif state.next_stage != stage:
            log.debug("retry not expected (duplicate, cancelled or done)", delivery_id=delivery.delivery_id)
            return
        await self._attempt(record.partition, state, delivery)

    async def _supersede_previous(self, state: KeyState) -> None:
        """The previous delivery of the key will never be sent: say so if it was not done."""
        if state.status in (Status.PENDING.value, Status.ERROR.value):
            await self._status(
                state.delivery(), Status.SUPERSEDED, state.attempts, error="a newer version exists"
            )

    async def _on_command(self, record: _Input) -> None:
        command = Command.from_avro(codec_for("Command").decode(record.value))
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
        destination = self.destinations.get(delivery.destination_id)
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
                error="the destination is disabled: not sent",
            )
            return
        recorder = CallRecorder()
        started, t0 = now_utc(), time.perf_counter()
        error: ConnectorError | None = None
        deadline = 0.0
        limit = asyncio.timeout(None)
        try:
            async with limit:
                connector = await self.connectors.get(destination)  # no I/O but opening clients
                recorder = CallRecorder(connector.secrets)
                deadline = connector.attempt_deadline
                limit.reschedule(asyncio.get_running_loop().time() + deadline)
                await connector.deliver(delivery, recorder)
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
            await self._conclude(
                partition, state, delivery, Status.SUCCESSFUL, number, attempt_record=attempt
            )
            return
        next_stage = delivery.stage + 1
        if (
            isinstance(error, RetryableError)
            and not delivery.final
            and next_stage <= len(self.topics.retries)
        ):
            due = now_utc() + dt.timedelta(seconds=self.settings.retry_delays[next_stage - 1])
            if isinstance(error, BackpressureError) and error.retry_after is not None:
                due = max(due, now_utc() + dt.timedelta(seconds=error.retry_after))
            state.next_stage, state.status = next_stage, Status.PENDING.value
            await self._conclude(
                partition,
                state,
                delivery,
                Status.PENDING,
                number,
                retry=delivery.evolve(stage=next_stage, attempt=number, due_at=due),
                next_retry_at=due,
                error=error.message,
                attempt_record=attempt,
            )
            return
        if not delivery.final:  # a failed operator Retry leaves the automatic ladder as it was
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
                self._producer_().send(
                    self.topics.retries[retry.stage - 1],
                    retry.key,
                    codec_for("Delivery").encode(retry.to_avro()),
                    partition=partition,
                    headers=[due_at_header(retry.due_at)],
                )
            )
        await asyncio.gather(*outputs)
        await self._save(partition, delivery.key, state)

    # -- outputs ------------------------------------------------------------------------------

    def _producer_(self) -> AsyncProducer:
        assert self._producer is not None
        return self._producer

    def _state(self, partition: int, key: str) -> KeyState | None:
        raw = self.store.get(partition, key)
        return KeyState.from_bytes(raw) if raw is not None else None

    async def _save(self, partition: int, key: str, state: KeyState) -> None:
        await self.store.put(partition, key, state.to_bytes(), producer=self._producer_())

    async def _status(
        self, delivery: Delivery, status: Status, attempt: int, *, manual: bool = False, **extra: Any
    ) -> None:
        event = DeliveryStatus.for_delivery(
            delivery, status, status_seq(attempt, status, manual), attempt=attempt, manual=manual, **extra
        )
        await self._producer_().send(
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


def _apply_pauses(consumer: Consumer, paused: set[Partition], wanted: set[Partition]) -> None:
    """Pauses and resumes so that exactly ``wanted`` is paused (``paused`` is updated in place)."""
    to_pause, to_resume = wanted - paused, paused - wanted
    if to_pause:
        consumer.pause([TopicPartition(t, p) for t, p in to_pause])
    if to_resume:
        consumer.resume([TopicPartition(t, p) for t, p in to_resume])
    paused.difference_update(to_resume)
    paused.update(to_pause)


def _body_due_ms(msg: Message) -> int:
    """A retry record without the due-at header: its due time from the body (0 if unreadable)."""
    try:
        due: dt.datetime = codec_for("Delivery").decode(msg.value())["due_at"]
    except SchemaError:
        return 0
    return int(due.timestamp() * 1000)


async def _as_coroutine(awaitable: Awaitable[None]) -> None:
    await awaitable


def build(settings: Settings) -> DeliveryWorker:
    return DeliveryWorker(settings)
