"""Produce and consume rate of Avro AbsenceEvents on the broker (issue [A]'s figure).

absync's side: ``AbsencePublisher`` (idempotent, acks=all, Avro single-object encoding) for N events,
then a read_committed consumer that decodes every record back to an ``AbsenceEvent``. Baseline, in
the same run on the same broker: the same pre-encoded bytes produced by a bare confluent-kafka
producer, and consumed without decoding: what Kafka itself costs here.

Usage: KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python -m bench.produce_consume [--events 100000]
"""

from __future__ import annotations

import argparse
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.common import BenchRun, EventFactory, Row, kafka_config, log, print_rows
from schemas.codec import codec_for
from schemas.models import AbsenceEvent
from streams.kafka import produce
from streams.publisher import AbsencePublisher


def consume_all(topic: str, partitions: int, expected: int, decode: bool) -> float:
    """Seconds to read ``expected`` records from the start of ``topic``."""
    consumer = Consumer(
        {
            **kafka_config(),
            "group.id": f"bench-read-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "fetch.max.bytes": 52_428_800,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    codec = codec_for("AbsenceEvent")
    seen = 0
    started = time.perf_counter()
    while seen < expected:
        for msg in consumer.consume(1000, 1.0):
            if msg.error() is None:
                if decode:
                    AbsenceEvent.from_avro(codec.decode(msg.value()))
                seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    n = parser.parse_args().events
    factory = EventFactory()
    events = [factory.event() for _ in range(n)]
    codec = codec_for("AbsenceEvent")
    with BenchRun("produce") as run:
        topic, partitions = run.topics.absences, run.settings.partitions
        started = time.perf_counter()
        with AbsencePublisher(run.settings) as publisher:
            for event in events:
                publisher.publish(event)
        absync_produce = time.perf_counter() - started
        log(f"published {n} events in {absync_produce:.2f}s")

        raw = [(e.key.encode(), codec.encode(e.to_avro())) for e in events]
        producer = Producer({**kafka_config(), "enable.idempotence": True, "acks": "all"})
        baseline_topic = run.topics.invalid  # same partitions, unused by this run
        started = time.perf_counter()
        for key, value in raw:
            produce(producer, baseline_topic, key, value, wait=0.05)
        producer.flush(120)
        baseline_produce = time.perf_counter() - started

        absync_consume = consume_all(topic, partitions, n, decode=True)
        baseline_consume = consume_all(baseline_topic, partitions, n, decode=False)
    print_rows(
        [
            Row(
                "produce rate (AbsencePublisher, Avro encode)",
                n / absync_produce,
                "events/s",
                n / baseline_produce,
            ),
            Row(
                "consume rate (read_committed + Avro decode)",
                n / absync_consume,
                "events/s",
                n / baseline_consume,
            ),
        ]
    )


if __name__ == "__main__":
    main()
