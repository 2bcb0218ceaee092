"""The producer API for upstream Python services: publish absence changes to ``absences``.

::

    from streams.publisher import AbsencePublisher

    with AbsencePublisher(settings) as publisher:   # flushes and closes on exit
        publisher.publish(event)                     # validates, encodes, sends (asynchronously)

Idempotent producer with ``acks=all`` (no duplicate or reordering on retries), key =
``<tenant>|<absence id>`` (one absence's changes stay in order; two tenants' absences with the same
id never share a key), Avro single-object encoding; or, with ``confluent_wire_format=True``
and ``ABSYNC_SCHEMA_REGISTRY_URL``, the Confluent wire format: the schema is registered under the
subject ``<absences topic>-value`` (TopicNameStrategy; or only looked up with ``auto_register=False``)
once, when the publisher is built, which fails there and then with a clear
:class:`~schemas.errors.SchemaError` if the registry refuses it or cannot be reached. An event that
breaks a rule (text limits and control characters included, see :mod:`schemas.models`) or is larger
than ``ABSYNC_MAX_EVENT_BYTES`` encoded raises :class:`schemas.errors.ValidationError` at once; a record Kafka did not acknowledge raises
:class:`PublishError` from the next ``publish`` or from ``flush``: never swallowed. A wrong
password, an unknown CA or a missing ACL raises :class:`PublishError` naming it from ``flush``
within about a second, not after the flush timeout.
"""

from __future__ import annotations

import time
from types import TracebackType

from confluent_kafka import KafkaError, Message

from schemas.codec import codec_for
from schemas.errors import ValidationError
from schemas.models import AbsenceEvent, validate
from streams.kafka import explain, log_kafka_error, make_producer, produce
from streams.schema_registry import schema_registry
from streams.settings import Settings
from streams.topics import Topics


class PublishError(Exception):
    """Kafka did not acknowledge some events (the message says which and why)."""


class AbsencePublisher:
    def __init__(
        self,
        settings: Settings,
        *,
        flush_timeout: float = 30.0,
        confluent_wire_format: bool = False,
        auto_register: bool = True,
    ) -> None:
        self._topic = Topics(settings).absences
        self._codec = codec_for("AbsenceEvent")
        self._schema_id: int | None = None
        if confluent_wire_format:
            registry = schema_registry(settings)
            if registry is None:
                raise ValueError("the Confluent wire format needs ABSYNC_SCHEMA_REGISTRY_URL")
            subject = f"{self._topic}-value"
            self._schema_id = registry.register(subject, self._codec.text, auto_register=auto_register)
        self._producer = make_producer(settings, error_cb=self._on_error)
        self._flush_timeout = flush_timeout
        self._max_event_bytes = settings.max_event_bytes
        self._failures: list[str] = []
        self._refused = False

    def publish(self, event: AbsenceEvent) -> None:
        """Validates and sends one event; raises earlier delivery failures."""
        validate(event)
        self._raise_failures()
        if self._schema_id is None:
            value = self._codec.encode(event.to_avro())
        else:
            value = self._codec.encode_confluent(event.to_avro(), self._schema_id)
        if len(value) > self._max_event_bytes:
            raise ValidationError(
                f"the event is {len(value)} bytes encoded, more than ABSYNC_MAX_EVENT_BYTES "
                f"({self._max_event_bytes})"
            )
        produce(self._producer, self._topic, event.key.encode(), value, on_delivery=self._on_delivery)
        self._producer.poll(0)

    def flush(self) -> None:
        """Waits until every event sent is acknowledged; raises :class:`PublishError` otherwise."""
        deadline = time.monotonic() + self._flush_timeout
        remaining = self._producer.flush(0.5)
        while remaining and not self._failures and time.monotonic() < deadline:
            remaining = self._producer.flush(0.5)  # an access error (error_cb) ends the wait early
        if remaining and not self._failures:
            self._failures.append(f"{remaining} event(s) not acknowledged in {self._flush_timeout:g}s")
        self._raise_failures()

    def close(self) -> None:
        """Releases the producer; events not acknowledged by now are dropped (flush first)."""
        self._producer.purge()
        self._producer.flush(0)  # serves the delivery reports of the purged events
        self._producer.close()

    def _on_delivery(self, error: KafkaError | None, msg: Message) -> None:
        if error is not None:
            key = (msg.key() or b"").decode(errors="replace")
            self._failures.append(f"absence {key}: {error.str()}")

    def _on_error(self, error: KafkaError) -> None:
        """A wrong password, an unknown CA or a missing ACL: reported, not waited out."""
        log_kafka_error(error)
        message = explain(error)
        if message is not None and not self._refused:  # once: librdkafka repeats it on each retry
            self._refused = True
            self._failures.append(message)

    def _raise_failures(self) -> None:
        if self._failures:
            failures, self._failures = self._failures, []
            raise PublishError("; ".join(failures))

    def __enter__(self) -> AbsencePublisher:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if kind is None:
                self.flush()
            else:
                self._producer.flush(self._flush_timeout)
        finally:
            self.close()
