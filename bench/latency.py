"""End-to-end latency: from producing an absence event to the receiver answering its request.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092 .venv/bin/python -m bench.latency \\
        [--seconds 20] [--max-rate 110] [--batch-size 50]

One ``absync run --only fanout --only delivery`` process, one destination, the loopback receiver.
Events are published at a steady rate (each one timed just before ``AbsencePublisher.publish``)
for ``--seconds``: first at 200 events/s, then at 80% of the maximum throughput (``--max-rate``,
as measured by ``bench.pipeline_throughput``; without it a short throughput run measures it).
Latency = the receiver's answer time minus the publish time, per absence (both clocks are this
machine's). Prints p50/p99/max per rate, the rate actually achieved and the worker's peak RSS.

Each latency is also cut into hops, from the status events of ``delivery-status``: publish ->
fan-out (the PENDING status's time), fan-out -> attempt start (the fan-out's transaction commit, the
worker's fetch and its durable key state), attempt start -> receiver answer (the HTTP call).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.common import (
    BenchRun,
    EventFactory,
    ReceiverProc,
    Row,
    http_destinations,
    log,
    percentile,
    print_rows,
    read_statuses,
    start_pipeline,
)
from bench.pipeline_throughput import measure as measure_throughput
from streams.publisher import AbsencePublisher

STEADY_RATE = 200.0
DRAIN_TIMEOUT = 60.0
"""How long to wait for the last requests once publishing stopped (seconds)."""


def steady_load(
    publisher: AbsencePublisher, receiver: ReceiverProc, factory: EventFactory, rate: float, seconds: float
) -> tuple[dict[str, float], dict[str, float], float]:
    """(publish time and answer time per absence id, achieved rate) of one steady phase."""
    before = receiver.count()
    sent: dict[str, float] = {}
    total = int(rate * seconds)
    started = time.time()
    for i in range(total):
        delay = started + i / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        event = factory.event()
        sent[event.absence.id] = time.time()
        publisher.publish(event)
    achieved = total / (time.time() - started)
    receiver.wait_for(before + total, DRAIN_TIMEOUT)
    answered = {a.absence_id: a.at for a in receiver.arrivals()[before:] if a.absence_id in sent}
    return sent, answered, achieved


def hops(
    statuses: list[dict[str, Any]], sent: dict[str, float], answered: dict[str, float]
) -> dict[str, list[float]]:
    """Each answered absence's latency cut at its PENDING status and its successful attempt's start (ms)."""
    pending: dict[str, float] = {}
    started: dict[str, float] = {}
    for status in statuses:
        absence_id = status["absence_id"]
        if absence_id not in answered:
            continue
        if status["status"] == "PENDING" and status["attempt"] == 0:
            pending[absence_id] = status["occurred_at"].timestamp()
        elif status["status"] == "SUCCESSFUL" and status.get("attempt_record"):
            started[absence_id] = status["attempt_record"]["started_at"].timestamp()
    cut = [a for a in answered if a in pending and a in started]
    return {
        "publish -> fan-out": [(pending[a] - sent[a]) * 1000 for a in cut],
        "fan-out -> attempt start": [(started[a] - pending[a]) * 1000 for a in cut],
        "attempt start -> answer": [(answered[a] - started[a]) * 1000 for a in cut],
    }


def measure(
    phases: list[tuple[str, float]], seconds: float, batch_size: int = 1, suffix: str = ""
) -> list[Row]:
    """One pipeline and receiver, one destination (in batch mode when ``batch_size`` > 1): the
    latency rows of each (label, rate) phase, ``suffix`` added to every row's name."""
    rows: list[Row] = []
    with BenchRun("latency") as run:
        receiver = ReceiverProc(run.workdir)
        try:
            http_destinations(run, receiver.url, 1, batch_size)
            pipeline = start_pipeline(run)
            # One publisher for every phase: a new one spends its first ~0.5 s fetching metadata and
            # its producer id, which would be counted as the pipeline's latency.
            publisher = AbsencePublisher(run.settings)
            try:
                factory = EventFactory(seed=11)
                steady_load(publisher, receiver, factory, 20, 2)  # warm-up: connections, caches
                for label, rate in phases:
                    label = f"{label}{suffix}"
                    log(f"latency at {label}: publishing {rate:.0f} events/s for {seconds:g}s")
                    sent, answered, achieved = steady_load(publisher, receiver, factory, rate, seconds)
                    latencies = [(answered[a] - sent[a]) * 1000 for a in answered]
                    missing = len(sent) - len(answered)
                    rows += [
                        Row(f"e2e latency p50 at {label}", percentile(latencies, 50), "ms"),
                        Row(f"e2e latency p99 at {label}", percentile(latencies, 99), "ms"),
                        Row(f"e2e latency max at {label}", max(latencies), "ms"),
                        Row(f"published rate at {label}", achieved, "events/s"),
                    ]
                    for hop, times in hops(read_statuses(run), sent, answered).items():
                        rows += [
                            Row(f"  hop {hop} p50 at {label}", percentile(times, 50), "ms"),
                            Row(f"  hop {hop} p99 at {label}", percentile(times, 99), "ms"),
                        ]
                    if missing:
                        rows.append(Row(f"events not arrived in time at {label}", missing, "events"))
                rows.append(Row(f"peak RSS, latency worker{suffix}", pipeline.peak_rss_mb(), "MB"))
            finally:
                publisher.close()
                pipeline.stop()
        finally:
            receiver.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each steady phase")
    parser.add_argument("--max-rate", type=float, help="maximum throughput (events/s), 1 destination")
    parser.add_argument(
        "--batch-mode", type=int, default=50, help="batch size of the batch-mode run at 200/s (0: none)"
    )
    args = parser.parse_args()
    started = time.monotonic()
    max_rate = args.max_rate or measure_throughput(2000, 1, baseline=False)[0]
    phases = [(f"{STEADY_RATE:.0f}/s", STEADY_RATE), ("80% of max", 0.8 * max_rate)]
    rows = measure(phases, args.seconds)
    if args.batch_mode > 1:
        rows += measure(phases[:1], args.seconds, args.batch_mode, f" in batch mode ({args.batch_mode})")
    print_rows(rows)
    log(f"latency took {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
