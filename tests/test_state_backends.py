"""The contracts of :mod:`streams.state` on both backends (memory, disk), on a real broker: a restore
brings back the changelog's committed state into a fresh map, drop forgets (and a disk map's file goes),
StateStore's rollback undoes on both, and items() stays safe to put/delete while iterating, across
more entries than one disk chunk."""

from __future__ import annotations

import pytest
from confluent_kafka.cimpl import NewTopic

from streams.kafka import make_admin, make_producer
from streams.settings import Settings
from streams.state import StateStore
from streams.state_backend import CHUNK


@pytest.fixture(params=["memory", "disk"])
def store_settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    return settings.model_copy(update={"state_backend": request.param})


def _changelog(settings: Settings, entries: dict[str, bytes | None]) -> str:
    topic = f"{settings.topic_prefix}backend-state"
    admin = make_admin(settings)
    new = NewTopic(topic, 1, 1, config={"cleanup.policy": "compact"})
    for future in admin.create_topics([new]).values():
        future.result()
    producer = make_producer(settings)
    for key, value in entries.items():
        producer.produce(topic, key=key.encode(), value=value, partition=0)
    producer.flush(30)
    return topic


def test_restore_rollback_iteration_and_drop(store_settings: Settings) -> None:
    count = CHUNK + 50
    entries: dict[str, bytes | None] = {f"k{i:05d}": str(i).encode() for i in range(count)}
    entries["gone"] = b"x"
    topic = _changelog(store_settings, entries)
    producer = make_producer(store_settings)
    producer.produce(topic, key=b"gone", value=None, partition=0)  # a tombstone: deleted on restore
    producer.flush(30)
    store = StateStore(store_settings, topic, restore_timeout=30)
    store.restore([0])

    assert store.get(0, "k00007") == b"7"
    assert store.get(0, "gone") is None

    store.put(0, "k00001", b"changed")
    store.delete(0, "k00002")
    store.put(0, "new", b"n")
    store.rollback()
    assert store.get(0, "k00001") == b"1"
    assert store.get(0, "k00002") == b"2"
    assert store.get(0, "new") is None
    assert store.take_writes() == []

    seen: dict[str, bytes] = {}
    for key, value in store.items(0):  # the fan-out's sweep: deletes and puts while iterating
        seen[key] = value
        if key.endswith("3"):
            store.delete(0, key)
        else:
            store.put(0, key, value + b"!")
    store.commit()
    assert seen == {k: v for k, v in entries.items() if k != "gone"}
    survivors = dict(store.items(0))
    assert len(survivors) == count - sum(1 for k in seen if k.endswith("3"))
    assert all(v.endswith(b"!") for v in survivors.values())

    state_dir = store_settings.data_dir / "state"
    store.drop([0])
    with pytest.raises(KeyError, match="not restored here"):
        store.get(0, "k00007")
    assert not state_dir.exists() or list(state_dir.iterdir()) == []
