"""Every Kafka client absync builds, from one configuration (one place to tune and secure them).

- :func:`connection_config`: ``bootstrap.servers`` plus the ``KAFKA_*`` connection properties
  (TLS, SASL: :mod:`streams.kafka_env`) and an ``error_cb`` that names access errors. Producers,
  consumers, admin clients, table readers, the publisher, the CLI and the benches all start from it.
- :func:`make_producer`, :func:`make_transactional_producer`, :func:`make_consumer`,
  :func:`make_admin`, :func:`make_reader` (a group-less consumer for reading a topic by offsets).
- :func:`produce`: one record, waiting while librdkafka's local queue is full (:func:`try_produce`
  for callers that wait their own way, e.g. on an event loop).
- :func:`read_compacted`: a compacted topic read from its start to its end (and optionally on);
  :class:`ReadBarrier` lets other threads wait until such a reader has read what was written
  before they asked.
- :func:`watermarks`: a partition's (low, high), asked again while a new topic has no leader yet.
- :func:`check_access`: the start-up probe. A wrong password, an unknown CA or a missing ACL raises
  :class:`KafkaAccessError` with a message saying what to check, within ``timeout`` seconds: never a
  silent hang.

Secret property values are never logged (librdkafka's own error strings do not contain them).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]
from pydantic import SecretStr

from streams.kafka_env import KafkaConfigError
from streams.settings import Settings

log = structlog.get_logger(__name__)

_SSL_CODES = {KafkaError._SSL}
_CREDENTIAL_CODES = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
_ACL_CODES = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
}


_NO_LEADER_YET = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
}
"""What a topic created a moment ago answers until its leader is known (librdkafka does not mark
them retriable in this call)."""


class KafkaAccessError(Exception):
    """Kafka refused absync's certificate, credentials or permissions; the message says which and
    what to check. Not transient: the process should end and be reconfigured."""


def explain(error: KafkaError, settings: Settings | None = None) -> str | None:
    """A message for an access error (TLS, SASL, ACL), None for any other error."""
    code, reason = error.code(), error.str()
    who = _principal(settings) if settings is not None else "absync's principal"
    if code in _CREDENTIAL_CODES:
        return (
            f"Kafka refused the credentials of {who} ({error.name()}: {reason}); "
            "check KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
        )
    if code in _SSL_CODES or (code == KafkaError._TRANSPORT and "SSL" in reason):
        return (
            f"the TLS handshake with Kafka failed ({error.name()}: {reason}); check KAFKA_SSL_CA_LOCATION "
            "(the CA that signed the brokers' certificates), KAFKA_SECURITY_PROTOCOL and, for mutual "
            "TLS, KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION"
        )
    if code in _ACL_CODES:
        return f"Kafka's ACLs refuse {who} ({error.name()}: {reason}); grant the ACLs of docs/deployment.md"
    return None


def _principal(settings: Settings) -> str:
    props = kafka_properties(settings)
    if "sasl.username" in props:
        return f"user {props['sasl.username']!r}"
    if "ssl.certificate.location" in props:
        return f"the client certificate {props['ssl.certificate.location']}"
    return "absync's principal"


def log_kafka_error(error: KafkaError) -> None:
    """librdkafka's error_cb: access errors at error level, named; others (a broker restarting,
    reconnections that librdkafka retries by itself) at debug."""
    message = explain(error)
    if message is not None:
        log.error("kafka access refused", code=error.name(), reason=message)
    else:
        log.debug("kafka client error", code=error.name(), reason=error.str())


def connection_config(settings: Settings) -> dict[str, Any]:
    """``bootstrap.servers``, the ``KAFKA_*`` connection properties and the error callback."""
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "error_cb": log_kafka_error,
        **kafka_properties(settings),
    }


def kafka_properties(settings: Settings) -> dict[str, str]:
    """The ``KAFKA_*`` connection properties in clear (for building clients only, never for logs)."""
    return {
        name: value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        for name, value in settings.kafka_properties
    }


def _build(factory: Callable[[dict[str, Any]], Any], config: dict[str, Any]) -> Any:
    """Builds a client; librdkafka's refusal of a property (a bad name, value or certificate file)
    becomes a :class:`KafkaConfigError` that names it."""
    try:
        return factory(config)
    except KafkaException as exc:
        raise KafkaConfigError(
            f"librdkafka refused the Kafka client configuration: {exc.args[0].str() if exc.args else exc}; "
            "check the KAFKA_* variables (KAFKA_<PROPERTY>, dots as underscores)"
        ) from None


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    return {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 1,  # 5 (librdkafka's default) added ~10 ms to e2e p50; 0 cost ~10% more CPU per event
        "compression.type": "lz4",
        "client.id": f"{settings.group_prefix}-producer",
        **connection_config(settings),
        **overrides,
    }


def make_producer(settings: Settings, **overrides: Any) -> Producer:
    """Idempotent producer, acks=all."""
    producer: Producer = _build(Producer, producer_config(settings, **overrides))
    return producer


def make_transactional_producer(settings: Settings, transactional_id: str, **overrides: Any) -> Producer:
    producer = make_producer(
        settings,
        **{
            "transactional.id": transactional_id,
            "transaction.timeout.ms": 60_000,
            # A transaction begun right after a commit is refused CONCURRENT_TRANSACTIONS until the
            # coordinator has written the markers; at librdkafka's default backoff (100 ms) one fan-out
            # batch in twenty waited 100+ ms (bench.latency: e2e p50 96 ms -> 20 ms with 10 ms).
            "retry.backoff.ms": 10,
            **overrides,
        },
    )
    try:
        producer.init_transactions(30)
    except KafkaException as exc:
        message = explain(exc.args[0], settings) if exc.args else None
        if message is not None:
            raise KafkaAccessError(f"transactional id {transactional_id}: {message}") from None
        raise
    return producer


def group_id(settings: Settings, name: str) -> str:
    """Consumer group of one processor; the topic prefix keeps tenants and tests apart. Transactional
    ids start the same way, so one prefixed ACL covers a deployment's groups and transactions."""
    return f"{settings.group_prefix}-{settings.topic_prefix}{name}"


def consumer_config(settings: Settings, group: str, **overrides: Any) -> dict[str, Any]:
    return {
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "range",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 2_000,
        "max.poll.interval.ms": 300_000,
        "client.id": f"{group}-{uuid.uuid4().hex[:6]}",
        **connection_config(settings),
        **overrides,
    }


BOUNDED_PREFETCH = {
    "queued.max.messages.kbytes": 256,
    "fetch.message.max.bytes": 32768,
    "fetch.queue.backoff.ms": 10,
}
"""Overrides for a consumer that must not fetch far ahead (the delivery worker's, and a processor's
with background topics: the fan-out's): about 256 KB queued (librdkafka's default is 64 MB, held in
the process) in fetches of at most 32 KB per partition (a larger record is still fetched whole), so
a backlog costs little memory and a seek (a deferral, a rewind) drops little. The queue is one for
every partition, and while it is over its size librdkafka postpones the next fetch of *every*
partition by ``fetch.queue.backoff.ms`` (1 s by default): a live record then waited 1 to 3 s behind
a resync's backlog (bench.resync, live p99 2.4 s -> 0.63 s with 10 ms)."""


def make_consumer(settings: Settings, group: str, **overrides: Any) -> Consumer:
    consumer: Consumer = _build(Consumer, consumer_config(settings, group, **overrides))
    return consumer


def make_reader(settings: Settings, **overrides: Any) -> Consumer:
    """A consumer that reads by offsets (``assign``), commits nothing, reads committed records only.
    Its group id (required by librdkafka, never joined) is under the deployment's group prefix."""
    return make_consumer(
        settings,
        group_id(settings, f"reader-{uuid.uuid4().hex[:8]}"),
        **{"enable.auto.offset.store": False, **overrides},
    )


def make_admin(settings: Settings, **overrides: Any) -> AdminClient:
    admin: AdminClient = _build(AdminClient, {**connection_config(settings), **overrides})
    return admin


# -- producing ------------------------------------------------------------------------------------


def try_produce(
    producer: Producer, topic: str, key: bytes | str | None, value: bytes | None, **kwargs: Any
) -> bool:
    """Queues one record; False when librdkafka's local queue is full (nothing queued)."""
    try:
        producer.produce(topic, key=key, value=value, **{k: v for k, v in kwargs.items() if v is not None})
    except BufferError:
        return False
    return True


def produce(
    producer: Producer,
    topic: str,
    key: bytes | str | None,
    value: bytes | None,
    *,
    wait: float = 0.1,
    **kwargs: Any,
) -> None:
    """Queues one record, waiting while the local queue is full (serving delivery reports ``wait``
    seconds at a time, so it drains). ``kwargs``: ``partition``, ``headers``, ``on_delivery``
    (None means librdkafka's default)."""
    while not try_produce(producer, topic, key, value, **kwargs):
        producer.poll(wait)


# -- reading a compacted topic --------------------------------------------------------------------


def read_compacted(
    settings: Settings,
    topic: str,
    on_record: Callable[[Message], None],
    *,
    partitions: Iterable[int] | None = None,
    follow: threading.Event | None = None,
    on_caught_up: Callable[[], None] | None = None,
    timeout: float | None = None,
    barrier: ReadBarrier | None = None,
) -> None:
    """Reads ``topic`` (or some of its partitions) from the start, committed records only, calling
    ``on_record`` for each record in offset order per partition.

    "The end" is the high watermark of each partition when reading began; ``on_caught_up`` is called
    once every partition's position reaches it. Without ``follow``, returns then; with it, keeps
    reading new records, and returns as soon as the event is set. ``barrier``: served while reading
    (see :class:`ReadBarrier`). Raises :class:`KafkaException` when the topic is not available, and
    :class:`TimeoutError` when the end is not reached within ``timeout`` seconds.
    """
    consumer = make_reader(settings)
    try:
        if partitions is None:
            metadata = consumer.list_topics(topic, timeout=30).topics.get(topic)
            if metadata is None or metadata.error is not None:
                raise KafkaException(
                    f"topic {topic} not available: {metadata.error if metadata else 'missing'}"
                )
            partitions = list(metadata.partitions)
        numbers = sorted(partitions)
        marks = {p: watermarks(consumer, TopicPartition(topic, p)) for p in numbers}
        ends = {p: high for p, (_, high) in marks.items()}
        pending = {p for p, (low, high) in marks.items() if high > low}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in numbers])
        deadline = None if timeout is None else time.monotonic() + timeout
        caught_up = False
        while True:
            if pending:
                done = consumer.position([TopicPartition(topic, p) for p in pending])
                pending -= {tp.partition for tp in done if tp.offset >= ends[tp.partition]}
            if not pending and not caught_up:
                caught_up = True
                if on_caught_up is not None:
                    on_caught_up()
            if (caught_up and follow is None) or (follow is not None and follow.is_set()):
                return
            if not caught_up and deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{topic} {sorted(pending)} not read to its end in {timeout:g} s")
            busy = barrier is not None and barrier.serve(consumer, topic, numbers)
            msg = consumer.poll(0.02 if busy else 0.2)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("compacted topic read error", topic=topic, error=str(error))
                continue
            on_record(msg)
    finally:
        consumer.close()


class ReadBarrier:
    """Tells other threads when a :func:`read_compacted` reader (with ``follow``) has read every
    record its topic held when they asked: how a reader of a table learns that an id it has not
    seen is unknown, not merely not read yet, without waiting a fixed time.

    :meth:`ask` (any thread) returns a future. The reading thread (:meth:`serve`, once per poll)
    looks up the end offsets of its partitions *after* the ask, then completes the future once its
    position has reached them. Asks that arrive while a look-up is being waited on join the next
    one, so a single look-up serves any number of askers and a flood of asks costs one broker round
    trip per batch. A failed look-up fails its futures with the error; a future is never left
    behind by a reader that goes on reading, but a closed reader leaves its futures pending (askers
    bound their own wait).
    """

    READ_TIMEOUT = 5.0
    """Seconds the look-up of the ends may take, and then the reader to reach them (else the askers
    get the error and the next ask looks up again)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._asked: list[Future[None]] = []
        self._waiting: list[Future[None]] = []
        self._ends: dict[int, int] | None = None
        self._since = 0.0

    def ask(self) -> Future[None]:
        future: Future[None] = Future()
        with self._lock:
            self._asked.append(future)
        return future

    def serve(self, consumer: Consumer, topic: str, partitions: list[int]) -> bool:
        """Called by the reading thread between polls; True while askers are waiting."""
        with self._lock:
            if not self._waiting and self._asked:
                self._waiting, self._asked = self._asked, []
                self._ends = None
            waiting = list(self._waiting)
        if not waiting:
            return False
        try:
            if self._ends is None:
                marks = {
                    p: watermarks(consumer, TopicPartition(topic, p), self.READ_TIMEOUT) for p in partitions
                }
                self._ends = {p: high for p, (low, high) in marks.items() if high > low}
                self._since = time.monotonic()
            if self._ends:
                positions = consumer.position([TopicPartition(topic, p) for p in self._ends])
                if any(tp.offset < self._ends[tp.partition] for tp in positions):
                    if time.monotonic() - self._since < self.READ_TIMEOUT:
                        return True
                    raise TimeoutError(f"{topic} not read to the offsets of {self._ends} in time")
        except (KafkaException, TimeoutError) as exc:
            self._finish(waiting, exc)
            return bool(self._asked)
        self._finish(waiting, None)
        return bool(self._asked)

    def _finish(self, waiting: list[Future[None]], error: Exception | None) -> None:
        with self._lock:
            self._waiting, self._ends = [], None
        for future in waiting:
            if future.set_running_or_notify_cancel():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)


def watermarks(consumer: Consumer, tp: TopicPartition, timeout: float = 30.0) -> tuple[int, int]:
    """(low, high) of a partition, asked again while Kafka answers a retriable error (a topic just
    created has no leader yet: NOT_LEADER_FOR_PARTITION) for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
            return low, high
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            transient = isinstance(error, KafkaError) and (
                error.retriable() or error.code() in _NO_LEADER_YET
            )
            if not transient or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# -- the start-up probe ---------------------------------------------------------------------------


def check_access(
    settings: Settings,
    *,
    topics: Iterable[str] = (),
    groups: Iterable[str] = (),
    timeout: float = 15.0,
    wait: bool = False,
) -> None:
    """Connects with the configured TLS/SASL settings and checks that the principal may see each of
    ``topics`` and ``groups``; returns when they are reachable. A topic that does not exist (yet) is
    not an error.

    Raises :class:`KafkaAccessError` naming the cause as soon as Kafka refuses the TLS handshake, the
    credentials or an ACL (about a second). When no broker answers at all within ``timeout``: raises
    too, or with ``wait`` (a worker whose broker may be restarting) logs a warning saying what to
    check and keeps trying, every ``timeout`` seconds: never a silent hang. Other errors while
    checking topics and groups (a coordinator still loading) are logged and not fatal."""
    errors: list[KafkaError] = []

    def collect(error: KafkaError) -> None:
        errors.append(error)
        log_kafka_error(error)

    def refuse_if_denied() -> None:
        admin.poll(0)  # serves error_cb
        for error in errors:
            message = explain(error, settings)
            if message is not None:
                raise KafkaAccessError(message)

    admin = make_admin(settings, error_cb=collect)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        refuse_if_denied()
        if time.monotonic() > deadline:
            reason = (
                f"Kafka at {settings.bootstrap_servers} did not answer within {timeout:g} s "
                f"({last or 'no answer'}); check KAFKA_BOOTSTRAP_SERVERS and KAFKA_SECURITY_PROTOCOL "
                "(a TLS listener needs SSL or SASL_SSL)"
            )
            if not wait:
                raise KafkaAccessError(reason)
            log.warning("kafka not reachable, still trying", reason=reason)
            deadline = time.monotonic() + timeout
        try:
            admin.list_topics(timeout=1.0)
            break
        except KafkaException as exc:
            last = exc
    for topic in topics:
        try:
            metadata = admin.list_topics(topic, timeout=timeout).topics.get(topic)
        except KafkaException as exc:
            refuse_if_denied()
            log.warning("kafka start-up check: topic not described", topic=topic, error=str(exc))
            continue
        refused = metadata.error if metadata is not None else None
        if refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            raise KafkaAccessError(f"topic {topic}: {explain(refused, settings)}")
    for group in groups:
        until = time.monotonic() + timeout
        while True:  # a coordinator still loading answers COORDINATOR_LOAD_IN_PROGRESS: ask again
            future = admin.describe_consumer_groups([group], request_timeout=5.0)[group]
            try:
                future.result()
                break
            except KafkaException as exc:
                message = explain(exc.args[0], settings) if exc.args else None
                if message is not None:
                    raise KafkaAccessError(f"consumer group {group}: {message}") from None
                if time.monotonic() > until:
                    log.warning("kafka start-up check: group not described", group=group, error=str(exc))
                    break
                time.sleep(0.5)
