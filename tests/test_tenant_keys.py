"""Tenants never collide (issue 12, item 2), on a real broker whose log cleaner really runs.

``absences`` used to be keyed (and compacted) by the absence id alone: tenant ``other`` publishing
``abs-1001`` took acme's ``abs-1001`` out of acme's resync, and compaction deleted it. The key is now
``<tenant>|<absence id>``. Here the test's own ``absences`` topic compacts within seconds (segments
rolled every 100 ms, no compaction lag, any dirty ratio): once the cleaner has removed an older
duplicate of a key, both tenants' ``abs-1001`` must still be there, and a resync of each tenant's
destination must send every absence of that tenant, including a record written under the old key.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from processors.resync import ResyncRequest, run_resync
from schemas.codec import codec_for
from schemas.destination import Destination
from schemas.models import AbsenceEvent, AbsenceStatus, ChangeKind
from streams.destinations import publish_destination
from streams.kafka import make_producer
from streams.publisher import AbsencePublisher
from streams.secrets import SecretBox
from streams.settings import Settings
from streams.topics import Topics, create_topics
from tests.conftest import delete_topics, make_settings
from tests.delivery.harness import SIGNING_SECRET
from tests.fakes.receiver import Receiver
from tests.streams_helpers import encode, make_event, next_change, read_to_end
from tests.test_resync import pipeline, replays, wait_fanned_out, wait_successful

LIMIT = 180.0
"""Seconds the log cleaner may take (its default back-off is 15 s): a bound, not an assertion."""

FAST_COMPACTION = {
    "cleanup.policy": "compact",
    "segment.ms": "100",
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
    "delete.retention.ms": "100",
}


@pytest.fixture
def compacting(bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings on their own prefix, one partition, and an ``absences`` topic that compacts at once."""
    settings = make_settings(bootstrap, tmp_path, partitions=1)
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    topic = NewTopic(
        Topics(settings).absences, num_partitions=1, replication_factor=1, config=FAST_COMPACTION
    )
    for future in admin.create_topics([topic]).values():
        future.result(30)
    create_topics(settings)  # the others, as usual
    yield settings
    delete_topics(settings)


def destination(settings: Settings, tenant: str, url: str) -> Destination:
    dest = Destination(
        id=f"dst-{tenant}",
        tenant=tenant,
        name=f"{tenant} receiver",
        kind="http",
        settings={"url": url},
        secrets={"signing_secrets": SecretBox.from_settings(settings).encrypt(SIGNING_SECRET)},
        revision=1,
    )
    publish_destination(settings, dest)
    return dest


def keys_and_events(settings: Settings) -> list[tuple[bytes, AbsenceEvent]]:
    codec = codec_for("AbsenceEvent")
    return [
        (m.key() or b"", AbsenceEvent.from_avro(codec.decode(m.value())))
        for m in read_to_end(settings, Topics(settings).absences)
        if m.value() is not None
    ]


def test_two_tenants_with_one_absence_id_survive_compaction_and_both_resync_fully(
    compacting: Settings,
) -> None:
    settings = compacting
    acme = [make_event("abs-1001", tenant="acme")] + [
        make_event(f"abs-{i}", tenant="acme") for i in range(2, 14)
    ]
    other_v1 = make_event("abs-1001", tenant="other", employee_id="emp-9", email="max@other.test")
    other_v2 = next_change(other_v1, ChangeKind.APPROVED, AbsenceStatus.APPROVED)
    with AbsencePublisher(settings) as publisher:
        for event in [*acme, other_v1, other_v2]:
            publisher.publish(event)
    # Written before the upgrade: keyed by the absence id alone. Still read, still resynced.
    legacy = make_event("abs-legacy", tenant="acme")
    producer = make_producer(settings)
    producer.produce(Topics(settings).absences, key=b"abs-legacy", value=encode(legacy))
    assert producer.flush(30) == 0

    # Roll segments (a record per 200 ms) until the cleaner has removed other's older abs-1001.
    filler = make_event("abs-filler", tenant="filler")
    deadline = time.monotonic() + LIMIT
    with AbsencePublisher(settings) as publisher:
        while True:
            filler = next_change(filler, ChangeKind.UPDATED, AbsenceStatus.PENDING)
            publisher.publish(filler)
            publisher.flush()
            seen = [event.event_id for key, event in keys_and_events(settings) if key == b"other|abs-1001"]
            if other_v1.event_id not in seen:
                break
            assert time.monotonic() < deadline, "the log cleaner did not compact absences in time"
            time.sleep(0.2)

    kept = {key: event for key, event in keys_and_events(settings)}
    assert kept[b"acme|abs-1001"].event_id == acme[0].event_id
    assert kept[b"other|abs-1001"].event_id == other_v2.event_id
    assert kept[b"abs-legacy"].event_id == legacy.event_id
    assert {key for key in kept if key.startswith(b"acme|")} == {e.key.encode() for e in acme}

    with ExitStack() as stack, pipeline(settings) as statuses:
        receivers = {tenant: stack.enter_context(Receiver()) for tenant in ("acme", "other")}
        wait_fanned_out(settings)
        for tenant, receiver in receivers.items():
            destination(settings, tenant, receiver.url + "/hook")
        results = {
            tenant: run_resync(settings, ResyncRequest(f"dst-{tenant}", rate=10_000)) for tenant in receivers
        }
        sent = {tenant: replays(settings, f"dst-{tenant}") for tenant in receivers}
        for deliveries in sent.values():
            wait_successful(statuses, deliveries)

    assert all(r.completed for r in results.values())
    assert results["acme"].upserts == len(acme) + 1  # 13 absences and the legacy-keyed one
    assert results["other"].upserts == 1
    assert set(receivers["acme"].state) == {e.absence.id for e in acme} | {"abs-legacy"}
    assert set(receivers["other"].state) == {"abs-1001"}
    assert {(d.tenant, d.version) for d in sent["other"]} == {("other", 2)}
    assert {d.tenant for d in sent["acme"]} == {"acme"}
