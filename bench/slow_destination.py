"""A slow destination blocks no one: delivery latency to destination B while destination A hangs
until its timeout, then the delivery throughput to B (deliveries per second to a local receiver).

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092 .venv/bin/python -m bench.slow_destination \\
        [--seconds 20] [--rate 20] [--burst 2000] [--timeout 10]

``absync run --only delivery`` (connector timeout ``--timeout``) and B's loopback receiver run as
subprocesses. A is a socket that accepts connections and never answers: every call to A waits for
the timeout, then goes to the 5-minute retry topic.

Phase 1: for ``--seconds``, ``--rate`` deliveries per second go to A and as many to B (one absence
each). B's latency = arrival at B's receiver minus the moment the delivery was produced.
Phase 2, A still hanging: ``--burst`` deliveries to B at once; throughput = burst / time until B
answered the last one. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import socket
import time

from bench.common import (
    BenchRun,
    ReceiverProc,
    Row,
    http_destinations,
    log,
    percentile,
    print_rows,
    start_pipeline,
)
from schemas.codec import codec_for
from schemas.delivery import Delivery
from schemas.destination import Destination
from streams.destinations import publish_destination
from streams.kafka import make_producer
from tests.connectors.deliveries import make_delivery

FAST, SLOW = "bench-d1", "bench-slow"


class Feed:
    def __init__(self, run: BenchRun) -> None:
        self._producer = make_producer(run.settings)
        self._topic = run.topics.deliveries
        self._codec = codec_for("Delivery")

    def send(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            self._producer.produce(
                self._topic, key=delivery.key, value=self._codec.encode(delivery.to_avro())
            )
            self._producer.poll(0)
        self._producer.flush(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=20.0, help="deliveries per second to each destination")
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=10.0, help="connector timeout (A never answers)")
    args = parser.parse_args()
    with (
        BenchRun("slow") as run,
        ReceiverProc(run.workdir) as receiver,
        socket.create_server(("127.0.0.1", 0), backlog=4096) as black_hole,
    ):
        http_destinations(run, receiver.url, 1)
        hole = f"http://127.0.0.1:{black_hole.getsockname()[1]}/hook"
        publish_destination(
            run.settings,
            Destination(id=SLOW, tenant="bench", name="never answers", kind="http", settings={"url": hole}),
        )
        feed = Feed(run)
        with start_pipeline(run, ("delivery",), ABSYNC_CONNECTOR_TIMEOUT=str(args.timeout)):
            produced: dict[str, float] = {}
            ticks = int(args.seconds * args.rate)
            started = time.monotonic()
            for i in range(ticks):
                time.sleep(max(0.0, started + i / args.rate - time.monotonic()))
                to_fast = make_delivery(absence_id=f"abs-f{i}", destination_id=FAST)
                feed.send([make_delivery(absence_id=f"abs-s{i}", destination_id=SLOW), to_fast])
                produced[to_fast.absence_id] = time.time()
            receiver.wait_for(len(produced), timeout=60)
            log(f"phase 1 done: {len(produced)} deliveries to B with A hanging; burst of {args.burst}")
            burst = [make_delivery(absence_id=f"abs-b{i}", destination_id=FAST) for i in range(args.burst)]
            t0 = time.time()
            feed.send(burst)
            receiver.wait_for(len(produced) + len(burst), timeout=180)
        arrivals = receiver.arrivals()
    latency_ms = [(a.at - produced[a.absence_id]) * 1000 for a in arrivals if a.absence_id in produced]
    burst_ids = {d.absence_id for d in burst}
    burst_times = [a.at for a in arrivals if a.absence_id in burst_ids]
    rows = [
        Row("slow destination: deliveries to the other one", float(len(latency_ms)), f"of {len(produced)}")
    ]
    if latency_ms:
        rows += [
            Row(
                f"slow destination ({args.timeout:g} s timeout): other's latency p50",
                percentile(latency_ms, 50),
                "ms",
            ),
            Row(
                f"slow destination ({args.timeout:g} s timeout): other's latency p99",
                percentile(latency_ms, 99),
                "ms",
            ),
            Row(f"slow destination ({args.timeout:g} s timeout): other's latency max", max(latency_ms), "ms"),
        ]
    if burst_times:
        label = f"delivery throughput, local receiver, A hanging ({len(burst_times)}/{len(burst)})"
        rows.append(Row(label, len(burst_times) / (max(burst_times) - t0), "deliveries/s"))
    print_rows(rows)


if __name__ == "__main__":
    main()
