"""A delivery worker with 100,000 records waiting in the 24-hour retry topic: memory, CPU, and proof
that none of them is processed early.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092 .venv/bin/python -m bench.waiting_retries \\
        [--records 100000] [--seconds 60]

The records are produced straight into ``deliveries.retry-4-24h`` (default delays), as the worker
writes them: a Delivery at stage 4 due in 24 hours, key ``<destination>|<absence>``, the due-at
header. Then ``absync run --only delivery`` runs for ``--seconds`` while its RSS and CPU time are
sampled from /proc every second. Proof that nothing ran: the receiver got no request, the
``delivery-status`` topic is empty, and the group committed no offset past the start of the 24-hour
topic.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from bench.common import (
    BenchRun,
    EventFactory,
    ReceiverProc,
    Row,
    http_destinations,
    kafka_config,
    log,
    print_rows,
    start_pipeline,
)
from schemas.codec import codec_for
from schemas.delivery import Delivery, Operation, delivery_id_for
from streams.delay import due_at_header
from streams.kafka import group_id, make_producer, produce
from streams.topics import Topics

WARM_UP = 10.0
"""Seconds after start-up excluded from the CPU figure (state restore, first fetches)."""


def produce_waiting(run: BenchRun, records: int) -> str:
    """Produces ``records`` deliveries due in 24 hours into the last retry topic; returns its name."""
    topic = run.topics.retries[-1]
    codec = codec_for("Delivery")
    factory = EventFactory(seed=3)
    producer = make_producer(run.settings)
    now = dt.datetime.now(dt.UTC)
    due = now + dt.timedelta(hours=24)
    for _ in range(records):
        event = factory.event()
        delivery = Delivery(
            delivery_id=delivery_id_for("bench-d1", event.event_id, Operation.UPSERT.value),
            destination_id="bench-d1",
            tenant=event.tenant,
            absence_id=event.absence.id,
            version=event.version,
            operation=Operation.UPSERT,
            event=event,
            due_at=due,
            created_at=now,
            attempt=4,
            stage=len(run.topics.retries),
        )
        value = codec.encode(delivery.to_avro())
        produce(producer, topic, delivery.key.encode(), value, headers=[due_at_header(due)])
        producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("the waiting records were not all acknowledged")
    return topic


def high_watermarks(topic: str) -> int:
    consumer = Consumer({**kafka_config(), "group.id": f"bench-{uuid.uuid4().hex[:8]}"})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in partitions
        )
    finally:
        consumer.close()


def committed_past_start(run: BenchRun, topic: str) -> int:
    """Records of ``topic`` the delivery group committed as processed."""
    consumer = Consumer({**kafka_config(), "group.id": group_id(run.settings, "delivery")})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=30)
        return sum(max(tp.offset, 0) for tp in committed)
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    started = time.monotonic()
    with BenchRun("waiting") as run:
        receiver = ReceiverProc(run.workdir)
        try:
            http_destinations(run, receiver.url, 1)
            topic = produce_waiting(run, args.records)
            log(f"{args.records} records waiting in {topic}; running the delivery worker {args.seconds:g}s")
            worker = start_pipeline(run, components=("delivery",))
            try:
                t0 = time.monotonic()
                rss: list[float] = []
                cpu_start = None
                while (elapsed := time.monotonic() - t0) < args.seconds:
                    rss.append(worker.rss_mb())
                    if cpu_start is None and elapsed >= WARM_UP:
                        cpu_start = (time.monotonic(), worker.cpu_seconds())
                    time.sleep(1.0)
                assert cpu_start is not None, "--seconds must exceed the warm-up"
                cpu_percent = 100 * (worker.cpu_seconds() - cpu_start[1]) / (time.monotonic() - cpu_start[0])
                peak = worker.peak_rss_mb()
            finally:
                worker.stop()
            requests = receiver.count()
        finally:
            receiver.stop()
        statuses = high_watermarks(Topics(run.settings).status)
        committed = committed_past_start(run, topic)
        waiting = high_watermarks(topic)
    print_rows(
        [
            Row(f"worker peak RSS, {args.records:,} waiting retries", peak, "MB"),
            Row(f"worker RSS at the end, {args.records:,} waiting retries", rss[-1], "MB"),
            Row(f"worker CPU while waiting (after {WARM_UP:g}s)", cpu_percent, "% of a core"),
            Row("records in the 24h topic", waiting, "records"),
            Row(
                "waiting records processed (requests + statuses + commits)",
                requests + statuses + committed,
                "records",
            ),
        ]
    )
    log(f"waiting_retries took {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
