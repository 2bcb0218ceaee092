"""Prometheus metrics, computed when scraped (nothing to keep in step with the processors):

- ``absync_deliveries{tenant,destination,status}``: deliveries in the view;
- ``absync_delivery_attempt_duration_seconds``: histogram of the attempts' durations in the view;
- ``absync_consumer_lag{group,topic}``: records not yet processed, for every absync consumer group
  (committed offsets in Kafka) and for the projection (offsets kept in SQL, ``group="sql:<name>"``);
- ``absync_delay_topic_backlog{topic}``: records waiting in each retry topic;
- ``absync_dead_letter_records_total{topic}``: records ever written to each dead-letter topic (its end
  offsets: retention does not lower it, so ``increase()`` is the dead-letter growth);
- ``absync_destination_attempts_total{tenant,destination,outcome}``: attempts per destination,
  ``outcome`` success or failure (:mod:`projections.health`; the error rate per destination);
- ``absync_destination_failing{tenant,destination}``: 1 while the destination fails without a success
  since, and ``absync_destination_failing_seconds``: for how long (auto-disable at
  ``ABSYNC_AUTO_DISABLE_AFTER``); ``absync_destination_enabled``: 0 once disabled.

The Kafka figures cost a few broker requests, so they are cached for ``ttl`` seconds; a broker that
does not answer leaves them out of the scrape (``absync_kafka_metrics_up 0``) instead of failing it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import sqlalchemy as sa
import structlog
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy.engine import Engine

from projections.db import attempts, consumer_offsets, deliveries, destination_health, destinations
from streams.kafka import make_admin
from streams.settings import Settings
from streams.topics import Topics

log = structlog.get_logger(__name__)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
KAFKA_TIMEOUT = 5.0


@dataclass(frozen=True)
class KafkaFigures:
    lag: dict[tuple[str, str], int] = field(default_factory=dict)
    """(group, topic) -> records behind."""
    backlog: dict[str, int] = field(default_factory=dict)
    """retry topic -> records not yet consumed."""
    dead_letters: dict[str, int] = field(default_factory=dict)
    """dead-letter topic -> records ever written (sum of its end offsets)."""


class KafkaLagReader:
    """Lag of absync's consumer groups and backlog of the retry topics, read from the broker."""

    def __init__(self, settings: Settings, engine: Engine, ttl: float = 5.0) -> None:
        self._settings = settings
        self._engine = engine
        self._topics = Topics(settings)
        self._ttl = ttl
        self._admin = make_admin(settings)
        self._lock = threading.Lock()
        self._cached: tuple[float, KafkaFigures] | None = None

    def read(self) -> KafkaFigures:
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > self._ttl:
                self._cached = (time.monotonic(), self._read())
            return self._cached[1]

    def _read(self) -> KafkaFigures:
        committed = self._committed_offsets()
        dead = [self._topics.invalid, self._topics.deliveries_invalid, self._topics.projection_invalid]
        topics = {topic for offsets in committed.values() for topic, _ in offsets} | set(self._topics.retries)
        topics |= set(dead)
        partitions = self._partitions(topics)
        every = {tp for tps in partitions.values() for tp in tps}
        latest = self._offsets(every, OffsetSpec.latest())  # type: ignore[no-untyped-call]
        earliest = self._offsets(every, OffsetSpec.earliest())  # type: ignore[no-untyped-call]

        def behind(tp: tuple[str, int], position: int | None) -> int:
            """A partition without a committed position is read from its start (auto.offset.reset)."""
            return max(0, latest.get(tp, 0) - (earliest.get(tp, 0) if position is None else position))

        lag = {
            (group, topic): sum(behind(tp, offsets.get(tp)) for tp in partitions.get(topic, []))
            for group, offsets in committed.items()
            for topic in sorted({topic for topic, _ in offsets})
        }
        # A retry topic's backlog counts from the furthest position of its readers (the delivery
        # worker's group).
        backlog = {
            topic: sum(
                behind(tp, max((o[tp] for o in committed.values() if tp in o), default=None))
                for tp in partitions.get(topic, [])
            )
            for topic in self._topics.retries
        }
        dead_letters = {
            topic: sum(latest.get(tp, 0) for tp in partitions[topic]) for topic in dead if topic in partitions
        }
        return KafkaFigures(lag=lag, backlog=backlog, dead_letters=dead_letters)

    def _committed_offsets(self) -> dict[str, dict[tuple[str, int], int]]:
        """group -> (topic, partition) -> next offset to read, for absync's groups (Kafka and SQL)."""
        prefix = f"{self._settings.group_prefix}-{self._settings.topic_prefix}"
        listing = self._admin.list_consumer_groups(request_timeout=KAFKA_TIMEOUT).result()
        groups = sorted(g.group_id for g in listing.valid if g.group_id.startswith(prefix))
        out: dict[str, dict[tuple[str, int], int]] = {}
        for group in groups:
            request = [ConsumerGroupTopicPartitions(group)]
            result = self._admin.list_consumer_group_offsets(request, request_timeout=KAFKA_TIMEOUT)[
                group
            ].result()
            offsets = {
                (tp.topic, tp.partition): tp.offset for tp in result.topic_partitions or [] if tp.offset >= 0
            }
            if offsets:
                out[group] = offsets
        with self._engine.connect() as conn:
            for row in conn.execute(sa.select(consumer_offsets)).mappings():
                out.setdefault(f"sql:{row['consumer']}", {})[(row["topic"], row["partition"])] = row[
                    "next_offset"
                ]
        return out

    def _partitions(self, topics: set[str]) -> dict[str, list[tuple[str, int]]]:
        metadata = self._admin.list_topics(timeout=KAFKA_TIMEOUT).topics
        return {
            topic: [(topic, p) for p in sorted(metadata[topic].partitions)]
            for topic in topics
            if topic in metadata and metadata[topic].error is None
        }

    def _offsets(self, partitions: set[tuple[str, int]], spec: OffsetSpec) -> dict[tuple[str, int], int]:
        if not partitions:
            return {}
        request = {TopicPartition(topic, partition): spec for topic, partition in partitions}
        futures = self._admin.list_offsets(request, request_timeout=KAFKA_TIMEOUT)
        return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}


class AbsyncCollector(Collector):
    """Builds every metric at scrape time from the view and (cached) Kafka figures."""

    def __init__(self, engine: Engine, kafka: KafkaLagReader) -> None:
        self._engine = engine
        self._kafka = kafka

    def collect(self) -> Iterator[Metric]:
        yield from self._view_metrics()
        yield from self._health_metrics()
        yield from self._kafka_metrics()

    def _health_metrics(self) -> Iterator[Metric]:
        labels = ["tenant", "destination"]
        attempts_total = CounterMetricFamily(
            "absync_destination_attempts", "Delivery attempts per destination.", labels=[*labels, "outcome"]
        )
        failing = GaugeMetricFamily(
            "absync_destination_failing", "1 while failing without a success since.", labels=labels
        )
        failing_for = GaugeMetricFamily(
            "absync_destination_failing_seconds",
            "Seconds since the first failure after the last success.",
            labels=labels,
        )
        enabled = GaugeMetricFamily(
            "absync_destination_enabled", "1 if enabled, 0 if disabled.", labels=labels
        )
        h = destination_health.c
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(h.tenant, h.destination_id, h.successes, h.failures, h.failing_since)
            ).all()
            switches = conn.execute(
                sa.select(destinations.c.tenant, destinations.c.id, destinations.c.enabled)
            ).all()
        now = time.time()
        for tenant, destination, successes, failures, since in rows:
            attempts_total.add_metric([tenant, destination, "success"], successes)
            attempts_total.add_metric([tenant, destination, "failure"], failures)
            failing.add_metric([tenant, destination], 1 if since is not None else 0)
            failing_for.add_metric([tenant, destination], max(0.0, now - since.timestamp()) if since else 0.0)
        for tenant, destination, on in switches:
            enabled.add_metric([tenant, destination], 1 if on else 0)
        yield attempts_total
        yield failing
        yield failing_for
        yield enabled

    def _view_metrics(self) -> Iterator[Metric]:
        by_status = GaugeMetricFamily(
            "absync_deliveries",
            "Deliveries in the view, by current status.",
            labels=["tenant", "destination", "status"],
        )
        duration_s = attempts.c.duration_ms / 1000.0
        bucket_columns = [
            sa.func.coalesce(sa.func.sum(sa.case((duration_s <= bound, 1), else_=0)), 0)
            for bound in LATENCY_BUCKETS
        ]
        with self._engine.connect() as conn:
            counts = conn.execute(
                sa.select(
                    deliveries.c.tenant, deliveries.c.destination_id, deliveries.c.status, sa.func.count()
                ).group_by(deliveries.c.tenant, deliveries.c.destination_id, deliveries.c.status)
            ).all()
            row = conn.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(duration_s), 0.0), *bucket_columns)
            ).one()
        for tenant, destination, status, count in counts:
            by_status.add_metric([tenant, destination, status], count)
        yield by_status
        total, total_seconds, *cumulative = row
        buckets = [(str(bound), int(n)) for bound, n in zip(LATENCY_BUCKETS, cumulative, strict=True)]
        yield HistogramMetricFamily(
            "absync_delivery_attempt_duration_seconds",
            "Duration of the delivery attempts in the view (connector call time).",
            buckets=[*buckets, ("+Inf", int(total))],
            sum_value=float(total_seconds),
        )

    def _kafka_metrics(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("absync_kafka_metrics_up", "1 if the last Kafka figures could be read.")
        try:
            figures = self._kafka.read()
        except (KafkaException, OSError, RuntimeError) as exc:
            log.warning("kafka metrics unavailable", error=str(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        lag = GaugeMetricFamily(
            "absync_consumer_lag", "Records not yet processed.", labels=["group", "topic"]
        )
        for (group, topic), value in sorted(figures.lag.items()):
            lag.add_metric([group, topic], value)
        yield lag
        backlog = GaugeMetricFamily(
            "absync_delay_topic_backlog", "Records waiting in a retry topic.", labels=["topic"]
        )
        for topic, value in sorted(figures.backlog.items()):
            backlog.add_metric([topic], value)
        yield backlog
        dead = CounterMetricFamily(
            "absync_dead_letter_records", "Records ever written to a dead-letter topic.", labels=["topic"]
        )
        for topic, value in sorted(figures.dead_letters.items()):
            dead.add_metric([topic], value)
        yield dead


def make_registry(settings: Settings, engine: Engine) -> CollectorRegistry:
    """A registry of its own per app (no global state: several apps can live in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AbsyncCollector(engine, KafkaLagReader(settings, engine)))
    return registry
