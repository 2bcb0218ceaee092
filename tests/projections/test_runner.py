"""The projection runner against the real broker, on SQLite and PostgreSQL: live view, a SIGKILLed
runner that resumes, and ``absync projection rebuild`` giving the same view."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from projections import queries
from projections.db import consumer_offsets, engine_from_url
from projections.runner import build
from schemas.codec import codec_for
from schemas.delivery import Status
from schemas.destination import Destination
from streams.kafka import make_producer
from streams.settings import Settings
from streams.topics import Topics
from tests.projections.conftest import REPO
from tests.projections.helpers import at, encode, fact, snapshot

pytestmark = pytest.mark.kafka

DEADLINE = 120.0  # seconds before a wait gives up (a guard against hanging, not a measure)


def lifecycle(i: int) -> list[bytes]:
    """Delivery i: PENDING, ERROR after attempt 1, SUCCESSFUL after attempt 2."""
    delivery, t = f"dlv_{i:06d}", i * 10
    return [
        encode(fact(delivery, Status.PENDING, seq=0, when=t)),
        encode(
            fact(
                delivery,
                Status.ERROR,
                seq=1,
                when=t + 1,
                attempt=1,
                attempted=True,
                error="503",
                next_retry_at=at(t + 5),
            )
        ),
        encode(fact(delivery, Status.SUCCESSFUL, seq=2, when=t + 6, attempt=2, attempted=True)),
    ]


def produce_lifecycles(settings: Settings, numbers: range) -> int:
    producer = make_producer(settings)
    topic = Topics(settings).status
    count = 0
    for i in numbers:
        for value in lifecycle(i):
            producer.produce(topic, key=f"dlv_{i:06d}".encode(), value=value)
            count += 1
    producer.flush(30)
    return count


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def applied_offsets(engine: Engine, topic: str) -> int:
    """Records of ``topic`` covered by the stored offsets (offsets start at 0 on fresh topics)."""
    with engine.connect() as conn:
        query = sa.select(sa.func.coalesce(sa.func.sum(consumer_offsets.c.next_offset), 0)).where(
            consumer_offsets.c.topic == topic
        )
        return int(conn.execute(query).scalar_one())


def cli_env(settings: Settings, database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ABSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "ABSYNC_PARTITIONS": str(settings.partitions),
        "ABSYNC_RETRY_DELAYS": ",".join(f"{d}s" for d in settings.retry_delays),
        "ABSYNC_DATA_DIR": str(settings.data_dir),
        "ABSYNC_DATABASE_URL": database_url,
        "ABSYNC_LOG_LEVEL": "WARNING",
        "ABSYNC_ENV": "development",  # the embedded secret key
    }


def projection_cli(settings: Settings, database_url: str, action: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "absync", "projection", action],
        env=cli_env(settings, database_url),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=True,
    )
    return done.stdout


def rebuild(settings: Settings, database_url: str) -> str:
    return projection_cli(settings, database_url, "rebuild")


@contextmanager
def projection_process(settings: Settings, database_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """``absync run --only projection`` in its own process; stopped (SIGTERM) on exit if still alive."""
    process = subprocess.Popen(
        [sys.executable, "-m", "absync", "run", "--only", "projection", "--no-create-topics"],
        env=cli_env(settings, database_url),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=DEADLINE)


async def test_runner_component_projects_both_topics_and_rebuild_gives_the_same_view(
    settings: Settings, database_url: str, engine: Engine
) -> None:
    topics = Topics(settings)
    total = produce_lifecycles(settings, range(40))
    producer = make_producer(settings)
    producer.produce(topics.status, key=b"dlv_bad", value=b"\xc3\x01garbage")
    gone = Destination(id="dst_gone", tenant="acme", name="Old", kind="http", updated_at=at(0))
    kept = Destination(
        id="dst_1", tenant="acme", name="Webhook", kind="http", secrets={"token": b"x"}, updated_at=at(0)
    )
    for destination in (gone, kept):
        producer.produce(
            topics.destinations,
            key=destination.id.encode(),
            value=codec_for("Destination").encode(destination.to_avro()),
        )
    producer.produce(topics.destinations, key=b"dst_gone", value=None)
    producer.flush(30)

    live = settings.model_copy(update={"database_url": database_url})
    component = build(live)
    assert component.name == "projection"
    stop = asyncio.Event()
    task = asyncio.create_task(component.run(stop))
    deadline = time.monotonic() + DEADLINE
    while (
        applied_offsets(engine, topics.status) < total + 1 or applied_offsets(engine, topics.destinations) < 3
    ):
        assert not task.done(), task.exception()
        assert time.monotonic() < deadline, "projection did not catch up"
        await asyncio.sleep(0.1)
    stop.set()
    await task

    assert queries.count_by_status(engine, tenant="acme") == {"SUCCESSFUL": 40}
    detail = queries.get_delivery(engine, "dlv_000007", tenant="acme")
    assert detail is not None
    assert (detail.delivery.attempt_count, [a.number for a in detail.attempts]) == (2, [1, 2])
    assert [(d.id, d.secret_names) for d in queries.list_destinations(engine, "acme")] == [
        ("dst_1", ["token"])
    ]
    view = snapshot(engine)

    output = rebuild(settings, database_url)
    assert f"{total + 3} record(s) applied" in output  # the undecodable one is skipped
    assert "deliveries: 40 (successful 40); destinations: 1" in output
    assert snapshot(engine) == view


def test_a_killed_runner_resumes_where_its_last_transaction_ended(
    settings: Settings, database_url: str, engine: Engine
) -> None:
    topics = Topics(settings)
    produced = 0
    stop_producing = threading.Event()

    def keep_producing() -> None:
        nonlocal produced
        start = 0
        while not stop_producing.is_set():
            produced += produce_lifecycles(settings, range(start, start + 200))
            start += 200

    producer_thread = threading.Thread(target=keep_producing)
    producer_thread.start()
    try:
        with projection_process(settings, database_url) as first:
            wait_for(lambda: applied_offsets(engine, topics.status) >= 1500, "the first batches")
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=DEADLINE)
            at_kill = applied_offsets(engine, topics.status)
    finally:
        stop_producing.set()
        producer_thread.join(timeout=DEADLINE)
    assert at_kill < produced, "the runner was killed with work left"

    with projection_process(settings, database_url) as second:
        wait_for(
            lambda: applied_offsets(engine, topics.status) == produced, "the restarted runner to catch up"
        )
        assert second.poll() is None
    deliveries = produced // 3
    assert queries.count_by_status(engine, tenant=None) == {"SUCCESSFUL": deliveries}
    view = snapshot(engine)
    assert len(view["attempts"]) == 2 * deliveries  # nothing applied twice
    assert all(row["attempt_count"] == 2 and row["last_error"] is None for row in view["deliveries"])

    rebuild(settings, database_url)
    assert snapshot(engine) == view


def test_rebuild_and_status_on_a_fresh_database(settings: Settings, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    topics = Topics(settings)
    produce_lifecycles(settings, range(3))
    lagging = projection_cli(settings, url, "status")
    assert sum(int(line.rsplit("lag ", 1)[1]) for line in lagging.splitlines() if "\tlag " in line) == 9

    assert "9 record(s) applied" in rebuild(settings, url)
    fresh = engine_from_url(url)
    try:
        assert queries.count_by_status(fresh, tenant=None) == {"SUCCESSFUL": 3}
    finally:
        fresh.dispose()
    status = projection_cli(settings, url, "status")
    partitions = [line for line in status.splitlines() if "\tlag " in line]
    assert len(partitions) == settings.partitions + 1
    assert all(line.endswith("lag 0") for line in partitions)
    assert f"{topics.status}[0]" in status
    assert "deliveries: 3 (successful 3); destinations: 0" in status
