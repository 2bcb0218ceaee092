"""Delay-topic precision: how late after its due time is a delayed record processed, and is any early?

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092 .venv/bin/python -m bench.delay_precision \\
        [--records 2000] [--spread 10] [--shuffled]

``absync run --only delivery`` (retry delays 1s,2s,3s,4s) and the loopback receiver run as
subprocesses. N deliveries are written straight into the four retry topics, as the worker writes them
(header ``absync-due-at``, explicit partition), due between 2 s and 2 + ``--spread`` s from now, in due
order within each partition as one retry topic holds them (``--shuffled``: in random order, as
Retry-After floors can leave them; a later head then holds back the records behind it).
Lateness = the receiver's arrival time of the request minus the record's due time. Prints p50, p99 and
max lateness and the number of records processed early (must be 0), and how many attempts the
receiver refused (a burst of new connections can overflow its listen backlog; such a record is
retried at the next stage, or is in Error after the last one). Asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random

from bench.common import (
    BenchRun,
    ReceiverProc,
    Row,
    failed_attempts,
    http_destinations,
    log,
    percentile,
    print_rows,
    start_pipeline,
)
from schemas.codec import codec_for
from streams.delay import due_at_header
from streams.kafka import make_producer
from tests.connectors.deliveries import make_delivery

DESTINATION = "bench-d1"


def produce_delayed(run: BenchRun, count: int, spread: float, shuffled: bool) -> dict[str, float]:
    """Writes the delayed records; returns absence id -> due time (epoch seconds)."""
    rng = random.Random(1)
    offsets = [2 + rng.uniform(0, spread) for _ in range(count)]
    if not shuffled:
        offsets.sort()
    start = dt.datetime.now(dt.UTC)
    producer = make_producer(run.settings)
    codec = codec_for("Delivery")
    due: dict[str, float] = {}
    partitions = run.settings.partitions
    for i, offset in enumerate(offsets):
        stage = 1 + i % len(run.topics.retries)
        at = start + dt.timedelta(seconds=offset)
        delivery = make_delivery(absence_id=f"abs-{i}", destination_id=DESTINATION).evolve(
            due_at=at, attempt=1, stage=stage
        )
        producer.produce(
            run.topics.retries[stage - 1],
            key=delivery.key,
            value=codec.encode(delivery.to_avro()),
            partition=i % partitions,
            headers=[due_at_header(at)],
        )
        producer.poll(0)
        due[delivery.absence_id] = at.timestamp()
    producer.flush(60)
    return due


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=10.0, help="due times spread over this many seconds")
    parser.add_argument("--shuffled", action="store_true", help="due times in random order per partition")
    args = parser.parse_args()
    with BenchRun("delay", retry_delays="1s,2s,3s,4s") as run, ReceiverProc(run.workdir) as receiver:
        http_destinations(run, receiver.url, 1)
        with start_pipeline(run, ("delivery",)):
            due = produce_delayed(run, args.records, args.spread, args.shuffled)
            log(f"{len(due)} delayed records written; waiting for them")
            receiver.wait_for(len(due), timeout=120 + args.spread, stall=30)
        arrivals = {a.absence_id: a.at for a in receiver.arrivals() if a.absence_id in due}
        failures = failed_attempts(run)
    for error, count in failures.most_common(3):
        log(f"{count} attempt(s) failed: {error}")
    lateness_ms = [(arrivals[a] - due[a]) * 1000 for a in arrivals]
    order = "shuffled" if args.shuffled else "in due order"
    if not lateness_ms:
        print_rows([Row("delay topic: lateness p99", "not measured: no record processed", "ms")])
        return
    print_rows(
        [
            Row(f"delay topic: records processed ({order})", float(len(arrivals)), f"of {len(due)}"),
            Row("delay topic: attempts refused by the receiver", float(sum(failures.values())), "attempts"),
            Row("delay topic: records processed early", float(sum(v < 0 for v in lateness_ms)), "records"),
            Row("delay topic: lateness p50", percentile(lateness_ms, 50), "ms"),
            Row("delay topic: lateness p99", percentile(lateness_ms, 99), "ms"),
            Row("delay topic: lateness max", max(lateness_ms), "ms"),
        ]
    )


if __name__ == "__main__":
    main()
