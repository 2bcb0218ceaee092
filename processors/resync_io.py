"""The plumbing a resync and a replay of failed deliveries share: the rate limit, the producer of
their output, their error (see :mod:`processors.resync` and :mod:`processors.replay_failed`)."""

from __future__ import annotations

import threading
import time

from confluent_kafka import Message, Producer

from processors import ProcessorError
from processors.fanout import RESYNC_DESTINATION_HEADER
from streams.kafka import make_producer, produce
from streams.records import coordinates
from streams.settings import Settings

DEFAULT_RATE = 500.0
"""Requests per second a resync sends by default: well under the worker's throughput."""
KAFKA_TIMEOUT = 30.0
OUTPUT_LINGER_MS = 20
"""How long the output producer gathers records into one batch: bulk output, where a few ms more
before Kafka has it cost nothing, and 1 ms (the live producers' setting) made a request per handful
of records (CPU per resynced absence 0.16 -> 0.14 ms, and fewer requests for the broker)."""


class ResyncError(ProcessorError):
    """A resync cannot run (unknown or disabled destination, ``resync`` and ``absences`` partitioned
    differently) or Kafka refused its output."""


class RateLimiter:
    """At most ``rate`` acquisitions per second (smooth: one every 1/rate s, a burst of one second)."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("the rate must be positive")
        self._interval = 1.0 / rate
        self._burst = max(1.0, rate)
        self._tokens = 1.0
        self._last = time.monotonic()

    def acquire(self, stop: threading.Event) -> bool:
        """Waits for a token; False if ``stop`` was set meanwhile."""
        while True:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._last) / self._interval)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            if stop.wait((1.0 - self._tokens) * self._interval):
                return False


class Output:
    """The idempotent producer of resync requests and commands; errors surface at flush."""

    def __init__(self, settings: Settings) -> None:
        self._producer: Producer = make_producer(settings, **{"linger.ms": OUTPUT_LINGER_MS})
        self._errors: list[str] = []

    def _acknowledged(self, err: object, _msg: Message) -> None:
        if err is not None:
            self._errors.append(str(err))

    def produce(
        self,
        topic: str,
        key: str,
        value: bytes,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        """One record, partitioned by its key."""
        self._produce(topic, key.encode(), value, headers=headers)

    def request(self, topic: str, msg: Message, destination_id: str) -> None:
        """The resync request of one ``absences`` record: its partition number, key and value."""
        header = (RESYNC_DESTINATION_HEADER, destination_id.encode())
        self._produce(topic, msg.key(), msg.value(), partition=coordinates(msg)[1], headers=[header])

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int = -1,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        """-1: the partition of the key (librdkafka's partitioner)."""
        produce(
            self._producer,
            topic,
            key,
            value,
            wait=0.05,
            partition=partition,
            headers=headers,
            on_delivery=self._acknowledged,
        )
        self._producer.poll(0)

    def flush(self) -> None:
        """Waits until Kafka acknowledged everything produced; raises if it refused any."""
        if self._producer.flush(KAFKA_TIMEOUT) != 0:
            raise ResyncError("Kafka did not acknowledge the resync's output in time")
        if self._errors:
            raise ResyncError(f"Kafka refused resync output: {self._errors[0]}")
