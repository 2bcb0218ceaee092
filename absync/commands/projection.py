"""``absync projection rebuild|status``: rebuild the SQL view from Kafka, or show how far it is.

``rebuild`` empties the view tables (deliveries, attempts, destinations), forgets the stored
offsets and replays both topics from offset zero until caught up. Stop the running projection
(``absync run``) first: two writers would each skip what the other stored.
"""

from __future__ import annotations

import argparse
import sys

from confluent_kafka import TopicPartition

from projections import queries
from projections.db import engine_for, migrate, writer
from projections.projector import CONSUMER, reset, stored_offsets
from projections.runner import catch_up
from streams.kafka import group_id, make_consumer
from streams.settings import get_settings
from streams.topics import Topics


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("projection", help="rebuild the operator view from Kafka, or show its lag")
    parser.add_argument("action", choices=["rebuild", "status"])
    parser.set_defaults(func=run)


def _summary(counts: dict[str, int], destinations: int) -> str:
    by_status = ", ".join(f"{status.lower()} {n}" for status, n in sorted(counts.items())) or "none"
    return f"deliveries: {sum(counts.values())} ({by_status}); destinations: {destinations}\n"


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    engine = engine_for(settings)
    migrate(engine)
    if args.action == "rebuild":
        with writer(engine.connect()) as conn, conn.begin():
            reset(conn)
        applied, seconds = catch_up(settings, engine)
        sys.stdout.write(f"rebuilt from offset 0: {applied} record(s) applied in {seconds:.1f}s\n")
    else:
        topics = Topics(settings)
        with engine.connect() as conn:
            stored = stored_offsets(conn)
        consumer = make_consumer(settings, group_id(settings, CONSUMER))
        try:
            for topic in (topics.status, topics.destinations):
                partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
                for partition in sorted(partitions):
                    _, end = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
                    at = stored.get((topic, partition), 0)
                    sys.stdout.write(f"{topic}[{partition}]\tat {at}\tend {end}\tlag {max(end - at, 0)}\n")
        finally:
            consumer.close()
    sys.stdout.write(
        _summary(queries.count_by_status(engine, tenant=None), len(queries.list_destinations(engine, None)))
    )
    return 0
