"""The delivery worker: the consume loop and the dispatch of records to ordered lanes per key.

One consumer group reads ``deliveries``, every retry topic, ``commands`` and the replay lane
``deliveries.replay``. They are co-partitioned (key ``<destination>|<absence>``, ``range`` assignor),
so every record of one key reaches one worker. Live work goes first: the replay partitions run only
while live work leaves room (:class:`processors.delivery.replay_lane.ReplayLane`).

Threads and tasks:

- the *poll thread* (a thread of its own, not asyncio's default executor) owns the consumer: it polls, gates the retry topics (:class:`DelayGate`: a record
  is never admitted before its due time), pauses/resumes partitions, commits, and hands each admitted
  record to the event loop;
- the *event loop* runs one ordered lane per key (:class:`streams.lanes.KeyLanes`): records of one
  key are handled one after the other (:class:`processors.delivery.handler.DeliveryHandler`), keys run
  in parallel, bounded by ``settings.delivery_concurrency`` and by a per-destination share of it
  (:class:`streams.slots.GroupSlots`: at most half of what the other destinations leave; live records
  before replayed ones), so hanging destinations, even several, never take every slot; it also serves the producer's acknowledgements
  (:class:`streams.async_producer.AsyncProducer`);
- each connector's blocking client library runs on threads of that destination
  (:mod:`connectors.executor`), and one attempt has a total deadline (``attempt_deadline``): a
  destination that hangs or drips its answer holds a lane only that long, then the delivery goes to
  the retry ladder.

Progress: an offset is committed only when every record before it in its partition is done (its
outputs acknowledged by Kafka; :class:`streams.offsets.OffsetTracker`): a crash re-delivers only
unfinished work. Sending is at-least-once; connectors are idempotent, so a repeat has no second effect.
Intake is bounded: past ``BUFFER_PER_SLOT`` records in flight per slot, every partition pauses.
A record whose handling fails unexpectedly stops the worker (its offset stays uncommitted).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import threading
import time
from collections.abc import Awaitable, Callable

import structlog
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from connectors.base import ConnectorOptions
from processors import ProcessorError
from processors.delivery.connector_cache import ConnectorCache
from processors.delivery.handler import Admitted, DeliveryHandler
from processors.delivery.rate_limit import RateLimits
from processors.delivery.replay_lane import ReplayLane
from schemas.codec import codec_for
from schemas.errors import SchemaError
from streams.async_producer import AsyncProducer
from streams.delay import DelayGate, Partition
from streams.destinations import DestinationTable
from streams.kafka import BOUNDED_PREFETCH, group_id, make_consumer, make_producer
from streams.lanes import KeyLanes
from streams.offsets import OffsetTracker
from streams.records import coordinates, header
from streams.secrets import SecretBox
from streams.settings import Settings
from streams.state import DirectStore
from streams.threads import run_in_thread
from streams.topics import REPLAY_COMMAND_HEADER, Topics

log = structlog.get_logger(__name__)

COMMIT_INTERVAL = 1.0
"""Seconds between offset commits of finished work."""
BUFFER_PER_SLOT = 50
"""Records buffered per concurrency slot before intake pauses (bounded memory)."""
DESTINATION_SHARE = 2
"""A destination may use at most 1/DESTINATION_SHARE of the concurrency slots the other destinations
leave: one hanging destination leaves half to everyone else, two leave a quarter or more."""


class DeliveryWorkerError(ProcessorError):
    """The worker cannot go on (its poll loop or a record's handling failed unexpectedly)."""


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
        self.lane = ReplayLane(self.topics.replay, concurrency)
        self.rate_limits = RateLimits()
        """Per-destination rate limits; this process's share follows its ``deliveries`` partitions."""
        self._producer: AsyncProducer | None = None
        self._handler: DeliveryHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._halt = threading.Event()
        self._failure: BaseException | None = None
        self._failed = asyncio.Event()

    # -- component ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Runs until ``stop`` is set; raises :class:`DeliveryWorkerError` when the worker failed."""
        self._loop = asyncio.get_running_loop()
        self.lanes = KeyLanes(self._concurrency, DESTINATION_SHARE)
        # a changed limit takes effect on the attempts already waiting on the old one
        self.destinations.on_change(
            lambda key, d: self._in_loop(self.rate_limits.update, key, d.rate_limit if d else None)
        )
        self.destinations.start()
        self._producer = AsyncProducer(make_producer(self.settings), self._loop)
        self._handler = DeliveryHandler(
            self.settings,
            self.topics,
            self.store,
            self.destinations,
            self.connectors,
            self._producer,
            self.rate_limits,
        )
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
        # A short fetch wait: a resumed delay partition joins the next fetch request at once. Little
        # fetched ahead: replayed and delayed records skipped for now cost neither memory nor a
        # live record's place in the queue.
        consumer = make_consumer(
            self.settings,
            group_id(self.settings, "delivery"),
            **{**BOUNDED_PREFETCH, "fetch.wait.max.ms": 50},
        )

        def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
            # librdkafka keeps a partition's pause across a rebalance (librdkafka#1849): a retry
            # partition paused before it was revoked would come back paused for good. Everything
            # assigned starts running; the gate pauses again what is not due.
            with contextlib.suppress(KafkaException):
                c.resume(partitions)
            assigned.update((tp.topic, tp.partition) for tp in partitions)
            self.store.restore({tp.partition for tp in partitions if tp.topic == self.topics.deliveries})
            self._share_rate_limits(assigned)
            log.info("delivery partitions assigned", count=len(partitions))

        def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
            revoked = {(tp.topic, tp.partition) for tp in partitions}
            self._call_in_loop(self._drain())
            self._commit(c, revoked, rewind)
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
            self._share_rate_limits(assigned)

        try:
            consumer.subscribe(
                [self.topics.deliveries, *self.topics.retries, self.topics.commands, self.topics.replay],
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
                replaying = self.tracker.in_flight(self.lane.topic)
                self.lane.update(in_flight - replaying, replaying)
                wanted = (
                    (assigned if throttled else set()) | (gate.gated & assigned) | self.lane.paused(assigned)
                )
                _apply_pauses(consumer, paused, wanted)
                for resumed in [p for p in rewind if p not in paused]:  # active: back to its head
                    consumer.seek(TopicPartition(*resumed, rewind.pop(resumed)))
                # Wait for one record, then take what is already there: consume(500, timeout) would
                # wait the whole timeout for 500 records and add that wait to every record's latency.
                first = consumer.consume(1, gate.seconds_to_next(0.2))
                admitted: list[Admitted] = []
                for msg in first + (consumer.consume(499, 0) if first else []):
                    if msg.error() is not None:
                        log.warning("delivery consumer error", error=str(msg.error()))
                        continue
                    if not gate.admit(msg):
                        continue
                    topic, partition, offset = coordinates(msg)
                    replay = topic == self.lane.topic
                    if replay and ((topic, partition) in rewind or not self.lane.take()):
                        rewind.setdefault((topic, partition), offset)  # sought back when it reopens
                        continue
                    rewind.pop((topic, partition), None)  # its head is back: no seek pending
                    self.tracker.started((topic, partition), offset)
                    admitted.append(
                        Admitted(
                            topic,
                            partition,
                            offset,
                            (msg.key() or b"").decode(errors="replace"),
                            msg.value(),
                            replay and header(msg, REPLAY_COMMAND_HEADER) is not None,
                        )
                    )
                if admitted:  # one wake-up of the event loop per batch, not per record
                    self._in_loop(self._dispatch, admitted)
                if time.monotonic() - last_commit >= COMMIT_INTERVAL:
                    self._commit(consumer, assigned, rewind)
                    last_commit = time.monotonic()
            self._call_in_loop(self._drain())
            self._commit(consumer, assigned, rewind)
        except BaseException as exc:
            self._in_loop(self._fail, exc)
            raise
        finally:
            consumer.close()

    def _share_rate_limits(self, assigned: set[Partition]) -> None:
        """This process's share of each destination's rate limit: its share of the ``deliveries``
        partitions (the retry topics are co-partitioned), so all the processes together keep the
        limit; alone (or with nothing assigned) the whole limit."""
        mine = sum(1 for t, _ in assigned if t == self.topics.deliveries)
        share = min(1.0, mine / max(1, self.settings.partitions))
        self._in_loop(self.rate_limits.set_share, share)

    def _commit(self, consumer: Consumer, partitions: set[Partition], rewind: dict[Partition, int]) -> None:
        """Commits what is done. An idle partition of a main topic commits the consumer's position,
        past any transaction marker; a delay partition never does (the gate rewinds those), nor a
        replay partition with a rewind pending (its position is past records not handed out)."""
        idle = {p for p in self.tracker.idle(partitions) if p[0] not in self._stage_of and p not in rewind}
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

    def _dispatch(self, records: list[Admitted]) -> None:
        assert self.lanes is not None
        for record in records:
            destination_id = record.key.partition("|")[0]
            live = record.topic != self.lane.topic  # first to a free slot of its destination
            self.lanes.submit(record.key, destination_id, functools.partial(self._handle, record), live)

    async def _handle(self, record: Admitted) -> None:
        """Handles one record; marks it done only if it was handled (or dead-lettered), else fails
        the worker and leaves its offset uncommitted."""
        assert self._handler is not None
        try:
            await self._handler.handle(record)
        except Exception as exc:
            self._fail(exc)
            return
        self.tracker.done((record.topic, record.partition), record.offset)


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
    """The ``delivery`` component (``absync run``)."""
    return DeliveryWorker(settings)
