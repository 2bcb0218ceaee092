"""A broker of a three-node cluster dies under load: nothing is lost, nothing is doubled, the pipeline
goes on.

The cluster is deploy/local/cluster.sh (RF 3, min.insync.replicas 2): with one node down every
partition keeps two in-sync replicas, so acks=all writes go on once leadership has moved. The node
killed is the one leading most partitions of ``absences`` (SIGKILL: no controlled shutdown, records
in flight), then restarted while production goes on; it must catch up (ISR back to 3).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from schemas.codec import codec_for
from schemas.models import AbsenceEvent
from streams.kafka import make_admin
from streams.publisher import AbsencePublisher
from streams.settings import Settings
from streams.topics import Topics, create_topics
from tests.cluster.conftest import cluster_sh
from tests.conftest import make_settings
from tests.delivery.harness import SIGNING_SECRET, http_destination
from tests.fakes.receiver import Receiver
from tests.faults.conftest import Workers
from tests.streams_helpers import make_event, read_to_end

pytestmark = [pytest.mark.cluster, pytest.mark.kafka]

EVENTS = 3000
PIPELINE_EVENTS = 300
PACE_S = 0.004
"""Pause between two events, so each stream spans the kill and the restart (12 s for EVENTS)."""
PIPELINE_PACE_S = 0.03
BOUND_S = 120.0
"""Longest wait for the cluster to heal (a bound, not an assertion)."""
RECEIVER_BOUND_S = 180.0
"""Longest wait for the receiver to hold every absence once the events are published (a worker the
watchdog ended is started again meanwhile)."""
STALL_TIMEOUT_S = 40
"""The watchdog's limit in this test (default 180 s): longer than any call's own timeout."""


@pytest.fixture
def cluster_settings(cluster: str, tmp_path: Path) -> Iterator[Settings]:
    """RF 3 / min ISR 2 topics of this test; deleted after it, so runs do not pile partitions up."""
    settings = make_settings(cluster, tmp_path, replication_factor=3, min_insync_replicas=2)
    create_topics(settings)
    yield settings
    admin = AdminClient({"bootstrap.servers": cluster})
    for future in admin.delete_topics([spec.name for spec in Topics(settings).specs()]).values():
        future.result(30)


def busiest_leader(admin: AdminClient, topic: str) -> int:
    """The node leading most partitions of ``topic`` (once every partition has a leader)."""
    leaders: Counter[int] = Counter()

    def known() -> bool:
        partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions.values()
        leaders.clear()
        leaders.update(p.leader for p in partitions if p.leader >= 0)
        return bool(partitions) and leaders.total() == len(partitions)

    wait_until(known, f"a leader for every partition of {topic}")
    return leaders.most_common(1)[0][0]


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached in {BOUND_S:g}s"
        time.sleep(0.5)


def topic_config(admin: AdminClient, topic: str) -> dict[str, str]:
    """The topic's configuration, once the broker asked knows the new topic (metadata propagates)."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    config: dict[str, str] = {}

    def described() -> bool:
        try:
            entries = admin.describe_configs([resource])[resource].result(30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
            return False
        config.update({name: entry.value for name, entry in entries.items()})
        return True

    wait_until(described, f"the configuration of {topic}")
    return config


def fully_replicated(admin: AdminClient, settings: Settings) -> bool:
    """Every partition of the test's topics has its three replicas in sync."""
    names = {spec.name for spec in Topics(settings).specs()}
    topics = admin.list_topics(timeout=10).topics
    return all(len(p.isrs) == 3 for name in names for p in topics[name].partitions.values())


def publish_through_failure(settings: Settings, events: list[AbsenceEvent], victim: int, pace: float) -> None:
    """Publishes ``events`` (idempotent, acks=all), SIGKILLs node ``victim`` a third of the way in and
    restarts it at two thirds, without pausing the stream."""
    restart = threading.Thread(target=cluster_sh, args=("start-node", str(victim)))
    with AbsencePublisher(settings, flush_timeout=BOUND_S) as publisher:
        for i, event in enumerate(events):
            if i == len(events) // 3:
                cluster_sh("stop-node", str(victim), "--kill")
            if i == 2 * len(events) // 3:
                restart.start()
            publisher.publish(event)
            time.sleep(pace)
    restart.join(BOUND_S)
    assert not restart.is_alive(), f"node {victim} did not restart"


def test_topics_are_replicated_three_times_with_two_in_sync(cluster_settings: Settings) -> None:
    admin = make_admin(cluster_settings)
    topic = Topics(cluster_settings).absences
    partitions = admin.list_topics(topic, timeout=30).topics[topic].partitions.values()
    assert {len(p.replicas) for p in partitions} == {3}
    assert topic_config(admin, topic)["min.insync.replicas"] == "2"


def test_a_broker_killed_mid_stream_loses_and_doubles_nothing(cluster_settings: Settings) -> None:
    admin = make_admin(cluster_settings)
    topic = Topics(cluster_settings).absences
    victim = busiest_leader(admin, topic)
    events = [make_event(f"abs-{i:05d}") for i in range(EVENTS)]

    publish_through_failure(cluster_settings, events, victim, PACE_S)
    wait_until(lambda: fully_replicated(admin, cluster_settings), f"node {victim} back in every ISR")

    codec = codec_for("AbsenceEvent")
    read = Counter(
        AbsenceEvent.from_avro(codec.decode(m.value())).event_id for m in read_to_end(cluster_settings, topic)
    )
    assert [event_id for event_id, n in read.items() if n > 1] == []
    assert set(read) == {e.event_id for e in events}


def test_the_pipeline_delivers_every_absence_through_a_broker_failure(
    cluster_settings: Settings, tmp_path: Path
) -> None:
    """Fan-out and delivery workers run against the cluster while a broker dies and comes back.

    The workers are ``absync run`` processes under a supervisor, as in production: after a broker
    failure librdkafka may block the fan-out for good (docs/reliability.md finding 2); the stall
    watchdog then ends the process (exit code 70) and the supervisor starts it again. Run inside
    pytest, the watchdog would end the test run itself.
    """
    admin = make_admin(cluster_settings)
    events = [make_event(f"abs-{i:05d}") for i in range(PIPELINE_EVENTS)]
    victim = busiest_leader(admin, Topics(cluster_settings).deliveries)
    with Receiver(secrets=[SIGNING_SECRET]) as receiver:
        http_destination(cluster_settings, receiver.url + "/hook", "dst-cluster", tenant=events[0].tenant)
        expected = {e.absence.id for e in events}
        workers = Workers(cluster_settings, tmp_path)
        workers.supervise(ABSYNC_STALL_TIMEOUT=str(STALL_TIMEOUT_S))
        try:
            workers.start("cluster")
            publish_through_failure(cluster_settings, events, victim, PIPELINE_PACE_S)
            reached = receiver.wait_until(lambda r: expected <= set(r.state), timeout=RECEIVER_BOUND_S)
            assert reached, workers.logs()
        finally:
            workers.stop_all()
        held = receiver.snapshot()
    assert set(held["state"]) == expected, workers.logs()
    assert held["effects"] == len(expected), workers.logs()
    assert all(code == 70 for _, code in workers.restarts), f"{workers.restarts}\n{workers.logs()}"
