"""Topics come from one place and are created idempotently on the real broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from streams.settings import Settings, parse_duration
from streams.topics import Topics, create_topics
from tests.conftest import make_settings


def test_durations_parse_and_default_ladder_is_5m_15m_1h_24h() -> None:
    assert parse_duration("250ms") == 0.25
    assert parse_duration("5m") == 300
    assert parse_duration("24h") == 86400
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
    assert Settings().retry_delays == (300.0, 900.0, 3600.0, 86400.0)
    assert Settings(retry_delays="1s,2s,3s,4s").retry_delays == (1.0, 2.0, 3.0, 4.0)  # type: ignore[arg-type]


def test_retry_topic_names_say_their_delay() -> None:
    names = Topics(Settings(topic_prefix="x.")).retries  # type: ignore[call-arg]
    assert names == [
        "x.deliveries.retry-1-5m",
        "x.deliveries.retry-2-15m",
        "x.deliveries.retry-3-1h",
        "x.deliveries.retry-4-24h",
    ]


def test_create_topics_is_idempotent_and_applies_specs(bootstrap: str, tmp_path: Path) -> None:
    settings = make_settings(bootstrap, tmp_path)
    first = create_topics(settings)
    topics = Topics(settings)
    assert set(first) == {spec.name for spec in topics.specs()}
    assert create_topics(settings) == []  # second run creates nothing

    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(timeout=10).topics
    assert len(metadata[topics.deliveries].partitions) == settings.partitions
    assert len(metadata[topics.destinations].partitions) == 1
    for retry in topics.retries:  # co-partitioned with deliveries
        assert len(metadata[retry].partitions) == settings.partitions
    resource = ConfigResource("topic", topics.destinations)
    config = admin.describe_configs([resource])[resource].result()
    assert config["cleanup.policy"].value == "compact"
