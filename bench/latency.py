"""End-to-end latency: from producing an absence event to the receiver answering its request.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092 .venv/bin/python -m bench.latency \\
        [--seconds 20] [--max-rate 110]

One ``absync run --only fanout --only delivery`` process, one destination, the loopback receiver.
Events are published at a steady rate (each one timed just before ``AbsencePublisher.publish``)
for ``--seconds``: first at 200 events/s, then at 80% of the maximum throughput (``--max-rate``,
as measured by ``bench.pipeline_throughput``; without it a short throughput run measures it).
Latency = the receiver's answer time minus the publish time, per absence (both clocks are this
machine's). Prints p50/p99/max per rate, the rate actually achieved and the worker's peak RSS.
"""

from __future__ import annotations

import argparse
import time

from bench.common import (
    BenchRun,
    EventFactory,
    ReceiverProc,
    Row,
    http_destinations,
    log,
    percentile,
    print_rows,
    start_pipeline,
)
from bench.pipeline_throughput import measure as measure_throughput
from streams.publisher import AbsencePublisher

STEADY_RATE = 200.0
DRAIN_TIMEOUT = 60.0
"""How long to wait for the last requests once publishing stopped (seconds)."""


def steady_load(
    run: BenchRun, receiver: ReceiverProc, factory: EventFactory, rate: float, seconds: float
) -> tuple[list[float], float, int]:
    """(latencies in ms, achieved rate, events missing at the receiver) of one steady phase."""
    before = receiver.count()
    sent: dict[str, float] = {}
    total = int(rate * seconds)
    started = time.time()
    with AbsencePublisher(run.settings) as publisher:
        for i in range(total):
            delay = started + i / rate - time.time()
            if delay > 0:
                time.sleep(delay)
            event = factory.event()
            sent[event.absence.id] = time.time()
            publisher.publish(event)
    achieved = total / (time.time() - started)
    receiver.wait_for(before + total, DRAIN_TIMEOUT)
    latencies = [
        (a.at - sent[a.absence_id]) * 1000 for a in receiver.arrivals()[before:] if a.absence_id in sent
    ]
    return latencies, achieved, total - len(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each steady phase")
    parser.add_argument("--max-rate", type=float, help="maximum throughput (events/s), 1 destination")
    args = parser.parse_args()
    started = time.monotonic()
    max_rate = args.max_rate or measure_throughput(2000, 1, baseline=False)[0]
    rows: list[Row] = []
    with BenchRun("latency") as run:
        receiver = ReceiverProc(run.workdir)
        try:
            http_destinations(run, receiver.url, 1)
            pipeline = start_pipeline(run)
            try:
                factory = EventFactory(seed=11)
                steady_load(run, receiver, factory, 20, 2)  # warm-up: connections, caches
                for label, rate in ((f"{STEADY_RATE:.0f}/s", STEADY_RATE), ("80% of max", 0.8 * max_rate)):
                    log(f"latency at {label}: publishing {rate:.0f} events/s for {args.seconds:g}s")
                    latencies, achieved, missing = steady_load(run, receiver, factory, rate, args.seconds)
                    rows += [
                        Row(f"e2e latency p50 at {label}", percentile(latencies, 50), "ms"),
                        Row(f"e2e latency p99 at {label}", percentile(latencies, 99), "ms"),
                        Row(f"e2e latency max at {label}", max(latencies), "ms"),
                        Row(f"published rate at {label}", achieved, "events/s"),
                    ]
                    if missing:
                        rows.append(Row(f"events not arrived in time at {label}", missing, "events"))
                rows.append(Row("peak RSS, latency worker", pipeline.peak_rss_mb(), "MB"))
            finally:
                pipeline.stop()
        finally:
            receiver.stop()
    print_rows(rows)
    log(f"latency took {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
