"""ABSYNC_PAYLOAD_RETENTION on the real broker: the topics that carry payloads get it at creation,
and an existing deployment's topics follow a changed setting on the next ``create_topics``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from streams.settings import DAY, Settings
from streams.topics import Topics, create_topics
from tests.conftest import delete_topics, make_settings

DAY_MS = int(DAY * 1000)


def retention_ms(settings: Settings, topic: str) -> int:
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    resource = ConfigResource("topic", topic)
    return int(admin.describe_configs([resource])[resource].result()["retention.ms"].value)


def test_the_retention_setting_parses_and_defaults_to_90_days() -> None:
    assert Settings().payload_retention == 90 * DAY
    assert Settings(payload_retention="36h").payload_retention == 36 * 3600  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1h"):
        Settings(payload_retention="10m")  # type: ignore[arg-type]


def test_topics_holding_payloads_follow_the_retention_at_creation_and_after(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = make_settings(bootstrap, tmp_path, payload_retention="10d")
    try:
        create_topics(settings)
        topics = Topics(settings)
        assert retention_ms(settings, topics.status) == 10 * DAY_MS  # was kept forever
        for dead_letters in (topics.invalid, topics.deliveries_invalid, topics.projection_invalid):
            assert retention_ms(settings, dead_letters) == 10 * DAY_MS  # min(30 days, retention)
        assert retention_ms(settings, topics.deliveries) == 7 * DAY_MS  # work topics keep their own

        # The setting changes: the next create_topics (absync topics create, absync run) alters them.
        longer = settings.model_copy(update={"payload_retention": 60 * DAY})
        assert create_topics(longer) == []
        # The broker applies an acknowledged config change from its metadata log: eventually visible.
        deadline = time.monotonic() + 60
        while (retention_ms(settings, topics.status), retention_ms(settings, topics.invalid)) != (
            60 * DAY_MS,
            30 * DAY_MS,
        ):
            assert time.monotonic() < deadline, "the retention of the existing topics did not follow"
            time.sleep(0.2)
    finally:
        delete_topics(settings)
