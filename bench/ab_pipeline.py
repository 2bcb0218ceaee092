"""A/B of absync variants on the pipeline-throughput workload, interleaved in one run.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092 .venv/bin/python -m bench.ab_pipeline \\
        --a ABSYNC_HTTP_TRANSPORT=httpx --b ABSYNC_HTTP_TRANSPORT=aiohttp [--rounds 3] [--events 2000]

Each round runs A then B (then the next round B then A, so neither always goes first), each on its
own topics as ``bench.pipeline_throughput`` does: N events published first, then one
``absync run --only fanout --only delivery`` with the variant's environment. Per run it prints the
rate, the CPU per event of the whole process, the CPU per event after start-up (from "partitions
assigned" to the last request, so start-up imports are left out) and the load average. At the end:
the medians per variant and B/A. On a shared machine read the CPU per event, not the rate.
"""

from __future__ import annotations

import argparse
import os
import statistics

from bench.common import (
    BenchRun,
    EventFactory,
    ReceiverProc,
    http_destinations,
    log,
    publish_events,
    start_pipeline,
)

WAIT_TIMEOUT = 240.0


def _env(pairs: list[str]) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in pairs)


def measure(
    label: str, env: dict[str, str], events: int, destinations: int, workers: int = 1
) -> tuple[float, float, float]:
    """(events/s, CPU ms per event in all, CPU ms per event after start-up)."""
    with BenchRun(f"ab-{label.lower()}") as run:
        receiver = ReceiverProc(run.workdir)
        try:
            http_destinations(run, receiver.url, destinations)
            factory = EventFactory()
            publish_events(run, (factory.event() for _ in range(events)))
            worker = start_pipeline(run, workers=workers, **env)
            started_cpu = worker.cpu_seconds()
            try:
                expected = events * destinations
                if not receiver.wait_for(expected, WAIT_TIMEOUT):
                    log(f"{label}: only {receiver.count()}/{expected} requests arrived")
                cpu = worker.cpu_seconds()
            finally:
                worker.stop()
            arrivals = receiver.arrivals()
        finally:
            receiver.stop()
    if len(arrivals) < 2:
        raise RuntimeError(
            f"{label}: {len(arrivals)} requests arrived (logs kept with ABSYNC_BENCH_KEEP_LOGS=1)"
        )
    span = arrivals[-1].at - arrivals[0].at
    rate = (len(arrivals) - 1) / destinations / span
    total, work = 1000 * cpu / events, 1000 * (cpu - started_cpu) / events
    load = os.getloadavg()[0]
    log(
        f"{label} {env}: {rate:.0f} events/s, {total:.2f} ms CPU/event in all, {work:.2f} after start-up"
        f" ({len(arrivals)} requests, {destinations} dest.), load {load:.1f}"
    )
    return rate, total, work


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", action="append", default=[], help="NAME=VALUE of variant A (repeatable)")
    parser.add_argument("--b", action="append", default=[], help="NAME=VALUE of variant B (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--destinations", type=int, default=1)
    parser.add_argument(
        "--workers-a",
        type=int,
        default=1,
        help="absync run --workers of A (rate only: CPU is the supervisor's)",
    )
    parser.add_argument("--workers-b", type=int, default=1, help="absync run --workers of B")
    args = parser.parse_args()
    variants = {"A": _env(args.a), "B": _env(args.b)}
    workers = {"A": args.workers_a, "B": args.workers_b}
    results: dict[str, list[tuple[float, float, float]]] = {"A": [], "B": []}
    for i in range(args.rounds):
        for label in ("A", "B") if i % 2 == 0 else ("B", "A"):
            try:
                results[label].append(
                    measure(label, variants[label], args.events, args.destinations, workers[label])
                )
            except (RuntimeError, TimeoutError) as exc:  # one failed run is reported, not fatal
                log(f"{label}: run failed: {exc}")
    med = {k: [statistics.median(r[j] for r in v) for j in range(3)] for k, v in results.items()}
    for label in ("A", "B"):
        rate, total, work = med[label]
        log(
            f"median {label} {variants[label]}: {rate:.0f} events/s, {total:.2f} ms in all, {work:.2f} after start-up"
        )
    log(
        f"B/A: rate {med['B'][0] / med['A'][0]:.2f}, CPU in all {med['B'][1] / med['A'][1]:.2f},"
        f" CPU after start-up {med['B'][2] / med['A'][2]:.2f}"
    )


if __name__ == "__main__":
    main()
