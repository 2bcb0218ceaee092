"""The store written outside a transaction (:class:`streams.state.DirectStore`), on a real broker:
what ``put`` returns is durable (a fresh store restores it), it is visible at once, and a value too
large for the changelog changes nothing."""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka.cimpl import NewTopic

from streams.async_producer import AsyncProducer
from streams.kafka import make_admin, make_producer
from streams.settings import Settings
from streams.state import DirectStore, StateTooLarge


@pytest.fixture(params=["memory", "disk"])
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The store tests run on both state backends (ABSYNC_STATE_BACKEND)."""
    return settings.model_copy(update={"state_backend": request.param})


def _changelog(settings: Settings) -> str:
    topic = f"{settings.topic_prefix}direct-state"
    admin = make_admin(settings)
    new = NewTopic(topic, settings.partitions, 1, config={"cleanup.policy": "compact"})
    for future in admin.create_topics([new]).values():
        future.result()
    return topic


def test_a_put_is_visible_at_once_and_restored_by_the_next_owner(settings: Settings) -> None:
    topic = _changelog(settings)
    store = DirectStore(settings, topic, restore_timeout=30)
    store.restore([0, 1])

    async def write() -> None:
        producer = AsyncProducer(make_producer(settings), asyncio.get_running_loop())
        try:
            await store.put(0, "dst|a", b"v1", producer=producer)
            assert store.get(0, "dst|a") == b"v1"
            await store.put(0, "dst|a", b"v2", producer=producer)
            await store.put(1, "dst|b", b"w1", producer=producer)
        finally:
            producer.close()

    asyncio.run(write())
    successor = DirectStore(settings, topic, restore_timeout=30)
    successor.restore([0, 1])

    assert successor.get(0, "dst|a") == b"v2"
    assert successor.get(1, "dst|b") == b"w1"
    assert dict(successor.items(0)) == {"dst|a": b"v2"}


def test_a_value_too_large_for_the_changelog_changes_nothing(settings: Settings) -> None:
    topic = _changelog(settings)
    store = DirectStore(settings, topic, restore_timeout=30)
    store.restore([0])
    too_large = b"x" * (settings.max_record_bytes + 1)

    async def write() -> None:
        producer = AsyncProducer(make_producer(settings), asyncio.get_running_loop())
        try:
            await store.put(0, "k", b"small", producer=producer)
            with pytest.raises(StateTooLarge):
                await store.put(0, "k", too_large, producer=producer)
        finally:
            producer.close()

    asyncio.run(write())
    successor = DirectStore(settings, topic, restore_timeout=30)
    successor.restore([0])

    assert store.get(0, "k") == b"small"
    assert successor.get(0, "k") == b"small"


def test_a_partition_not_restored_here_is_refused(settings: Settings) -> None:
    store = DirectStore(settings, _changelog(settings), restore_timeout=30)
    store.restore([0])
    store.drop([0])

    with pytest.raises(KeyError, match="not restored here"):
        store.get(0, "k")
