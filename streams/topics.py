"""Every topic of absync, declared in one place.

Partitioning rule: ``deliveries``, ``deliveries.replay``, every retry topic, ``commands`` and
``delivery-state`` share one partition count and one key (``<destination_id>|<absence_id>``), so
partition *p* of each belongs to the same worker (co-partitioning) and one absence's deliveries to
one destination stay in order (between the live and the replay lane, by the supersede rule of
:func:`processors.delivery.state.admit`).
``absences``, ``resync`` and ``fanout-state`` share one key, ``<tenant>|<absence id>`` (absence ids are
unique per tenant only; records written before the upgrade have the absence id alone), and one
partition count: the fan-out reads partition *p* of ``absences`` and ``resync`` with the state of
partition *p*. Each processor that reads records has a dead-letter topic (``*.invalid``).
``destinations`` has one partition: every worker reads all of it (a global table).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from streams.kafka import make_admin
from streams.settings import Settings

log = structlog.get_logger(__name__)

REPLAY_COMMAND_HEADER = "absync-command"
"""On ``deliveries.replay``: the record is a ``Command`` (a bulk Retry), not a ``Delivery``."""

DAY_MS = 86_400_000
FOREVER = "-1"


@dataclass(frozen=True)
class TopicSpec:
    logical: str
    name: str
    partitions: int
    replication: int
    config: dict[str, str] = field(default_factory=dict)
    doc: str = ""


def retry_topic_suffix(stage: int, delay_seconds: float) -> str:
    """'retry-1-5m': stage number and delay, so a topic name says what it holds."""
    if delay_seconds >= 3600 and delay_seconds % 3600 == 0:
        label = f"{int(delay_seconds // 3600)}h"
    elif delay_seconds >= 60 and delay_seconds % 60 == 0:
        label = f"{int(delay_seconds // 60)}m"
    elif delay_seconds >= 1 and delay_seconds == int(delay_seconds):
        label = f"{int(delay_seconds)}s"
    else:
        label = f"{int(delay_seconds * 1000)}ms"
    return f"retry-{stage}-{label}"


class Topics:
    """Topic names (with the optional prefix) and their specifications."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        p = settings.topic_prefix
        self.absences = f"{p}absences"
        self.invalid = f"{p}absences.invalid"
        self.deliveries_invalid = f"{p}deliveries.invalid"
        self.projection_invalid = f"{p}projection.invalid"
        self.resync = f"{p}resync"
        self.deliveries = f"{p}deliveries"
        self.replay = f"{p}deliveries.replay"
        """The replay lane: resync deliveries and bulk RETRY commands, read when live work leaves room
        (:mod:`processors.delivery.replay_lane`)."""
        self.retries = [
            f"{p}deliveries.{retry_topic_suffix(i + 1, d)}" for i, d in enumerate(settings.retry_delays)
        ]
        self.status = f"{p}delivery-status"
        self.destinations = f"{p}destinations"
        self.commands = f"{p}commands"
        self.fanout_state = f"{p}fanout-state"
        self.delivery_state = f"{p}delivery-state"
        self.daily_absences = f"{p}daily-absences"
        self.slack_commands = f"{p}slack-commands"

    def delay_for(self, topic: str) -> float:
        """The delay of a retry topic (0 for the main deliveries topic)."""
        if topic in self.retries:
            return self.settings.retry_delays[self.retries.index(topic)]
        return 0.0

    def specs(self) -> list[TopicSpec]:
        s = self.settings
        n, rf = s.partitions, s.replication_factor
        isr = {"min.insync.replicas": str(s.min_insync_replicas)}
        compact = {"cleanup.policy": "compact", **isr}

        def keep(days: int) -> dict[str, str]:
            return {"cleanup.policy": "delete", "retention.ms": str(days * DAY_MS), **isr}

        def personal(days: int) -> dict[str, str]:
            """Dead letters hold copies of personal data: ``days``, or less if the payload
            retention is shorter (docs/privacy.md)."""
            return {**keep(days), "retention.ms": str(min(days * DAY_MS, payload_retention_ms(s)))}

        specs = [
            TopicSpec(
                "absences",
                self.absences,
                n,
                rf,
                # Compacted by tenant and absence id: the latest state of every absence is kept forever
                # (bulk resync replays it); a week of full history is kept before compaction.
                {**compact, "min.compaction.lag.ms": str(7 * DAY_MS)},
                "Input: Avro AbsenceEvent, key = tenant|absence id (absence id alone before the upgrade).",
            ),
            TopicSpec(
                "resync",
                self.resync,
                n,
                rf,
                keep(7),
                "Resync requests: an absence's event as read from absences (same key and partition), "
                "for the fan-out to decide for the destination named in a header.",
            ),
            TopicSpec(
                "invalid", self.invalid, n, rf, personal(30), "Dead letter: bad input with a reason header."
            ),
            TopicSpec(
                "deliveries_invalid",
                self.deliveries_invalid,
                n,
                rf,
                personal(30),
                "Dead letter of the delivery worker: deliveries and commands it cannot read.",
            ),
            TopicSpec(
                "projection_invalid",
                self.projection_invalid,
                n,
                rf,
                personal(30),
                "Dead letter of the projection: status facts and destinations it cannot store.",
            ),
            TopicSpec("deliveries", self.deliveries, n, rf, keep(7), "Delivery work items."),
            TopicSpec(
                "replay",
                self.replay,
                n,
                rf,
                keep(7),
                "The replay lane: resync deliveries and bulk Retry commands (header absync-command), "
                "read by the delivery worker only when live work leaves room.",
            ),
            TopicSpec(
                "status",
                self.status,
                n,
                rf,
                # Payloads and responses (names, emails, leave types): ABSYNC_PAYLOAD_RETENTION.
                {"cleanup.policy": "delete", "retention.ms": str(payload_retention_ms(s)), **isr},
                "DeliveryStatus events (the projection's source), kept ABSYNC_PAYLOAD_RETENTION.",
            ),
            TopicSpec(
                "destinations", self.destinations, 1, rf, compact, "Destination configuration, latest per id."
            ),
            TopicSpec(
                "commands", self.commands, n, rf, keep(7), "Operator commands (Retry, Mark as processed)."
            ),
            TopicSpec(
                "fanout_state",
                self.fanout_state,
                n,
                rf,
                compact,
                "Changelog of the fan-out state per absence.",
            ),
            TopicSpec(
                "delivery_state",
                self.delivery_state,
                n,
                rf,
                compact,
                "Changelog of the delivery state per destination and absence.",
            ),
            TopicSpec(
                "daily_absences",
                self.daily_absences,
                n,
                rf,
                compact,
                "Changelog of who is absent which day (Slack).",
            ),
            TopicSpec(
                "slack_commands",
                self.slack_commands,
                1,
                rf,
                keep(7),
                "Operator commands on Slack daily posts, forwarded by the delivery worker to the scheduler.",
            ),
        ]
        for i, topic in enumerate(self.retries):
            delay_ms = int(s.retry_delays[i] * 1000)
            retention = max(7 * DAY_MS, 3 * delay_ms)
            specs.append(
                TopicSpec(
                    f"retry_{i + 1}",
                    topic,
                    n,
                    rf,
                    {"cleanup.policy": "delete", "retention.ms": str(retention), **isr},
                    f"Retry stage {i + 1}: consumed no earlier than {s.retry_delays[i]:g}s after the failure.",
                )
            )
        return specs


FOLLOWS_PAYLOAD_RETENTION = ("status", "invalid", "deliveries_invalid", "projection_invalid")
"""Logical names of the topics whose ``retention.ms`` follows ABSYNC_PAYLOAD_RETENTION."""


def payload_retention_ms(settings: Settings) -> int:
    return int(settings.payload_retention * 1000)


def apply_retention(settings: Settings, admin: AdminClient, existing: set[str], timeout: float) -> list[str]:
    """Sets ``retention.ms`` of the existing topics of :data:`FOLLOWS_PAYLOAD_RETENTION` to their
    specification (an incremental alter: other settings untouched). Returns their names."""
    specs = [
        spec
        for spec in Topics(settings).specs()
        if spec.logical in FOLLOWS_PAYLOAD_RETENTION and spec.name in existing
    ]
    if not specs:
        return []
    resources = [
        ConfigResource(
            ResourceType.TOPIC,
            spec.name,
            incremental_configs=[
                ConfigEntry(
                    "retention.ms",
                    spec.config["retention.ms"],
                    incremental_operation=AlterConfigOpType.SET,
                )
            ],
        )
        for spec in specs
    ]
    altered: list[str] = []
    for resource, future in admin.incremental_alter_configs(resources, request_timeout=timeout).items():
        try:
            future.result()
            altered.append(resource.name)
        except KafkaException as exc:  # e.g. a principal without AlterConfigs: absync still starts
            wanted = next(spec.config["retention.ms"] for spec in specs if spec.name == resource.name)
            log.warning(
                "topic retention not changed: set it yourself, or grant AlterConfigs",
                topic=resource.name,
                retention_ms=wanted,
                error=str(exc),
            )
    return altered


def create_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Creates every missing topic (idempotent) and brings the retention of the existing ones that
    follow ABSYNC_PAYLOAD_RETENTION to it. Returns the names it created."""
    admin = make_admin(settings)
    existing = set(admin.list_topics(timeout=timeout).topics)
    apply_retention(settings, admin, existing, timeout)
    missing = [spec for spec in Topics(settings).specs() if spec.name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(t.name, num_partitions=t.partitions, replication_factor=t.replication, config=t.config)
            for t in missing
        ],
        operation_timeout=timeout,
    )
    created: list[str] = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except Exception as exc:  # TOPIC_ALREADY_EXISTS from a concurrent creator is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                raise
    wait_for_leaders(admin, [t.name for t in missing], timeout)
    return created


def wait_for_leaders(admin: AdminClient, names: list[str], timeout: float) -> None:
    """Returns once the broker's metadata shows every partition of ``names`` with a leader.

    A topic whose creation the controller has acknowledged may not be in the metadata a client gets
    for a moment. A consumer that subscribes then leaves it out of its assignment until its next
    periodic metadata refresh (librdkafka: ``topic.metadata.refresh.interval.ms``, 5 minutes), so a
    processor started right after ``create_topics`` could sit idle for minutes.
    """
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        metadata = admin.list_topics(timeout=max(1.0, deadline - time.monotonic()))
        pending = {
            name
            for name in pending
            if (topic := metadata.topics.get(name)) is None
            or topic.error is not None
            or not topic.partitions
            or any(p.leader < 0 or p.error is not None for p in topic.partitions.values())
        }
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topics without a leader after {timeout:.0f}s: {', '.join(sorted(pending))}")
        time.sleep(0.1)
