"""Pipeline throughput: absence events per second from ``absences`` to a loopback HTTP receiver.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092 .venv/bin/python -m bench.pipeline_throughput \\
        [--events 4000] [--events-3 2000] [--runs 3] [--batch-size 50 [--rounds 2]]

For 1 and for 3 matching destinations, ``--runs`` times (3: issue 15's targets read the median of
three runs, each against the baseline in the same run): N realistic events are published to ``absences`` first, then
``absync run --only fanout --only delivery`` (one worker, one process) starts; the rate is the
number of events divided by the time between the receiver's first and last request (start-up
excluded). Baseline, measured in the same run on the same broker and receiver: a minimal hand-written
loop (confluent-kafka consumer, one httpx keep-alive PUT per destination, one status event produced
per request, offsets committed per batch), also in its own process, measured right after absync in
each run. Prints, per destination count, the run whose throughput ratio absync/baseline is the
median (its rates), the run whose CPU-per-event ratio is the median, the largest peak RSS of both
processes, and the ratios of every run.

Then, the same (1 and 3 destinations) against the same loop with the destinations in absync.v1 batch mode
(``--batch-mode 50``: up to 50 changes per signed request, a result per item, docs/http-sync.md;
``--batch-mode 0`` skips it): issue 15's "batched delivery where the destination allows it". The
loop still sends one request per change, as a receiver without batch mode needs.

``--batch-size N`` (N > 1) compares, for 1 destination, absync in single mode with absync whose
destination is in absync.v1 batch mode (``batch_size: N``, docs/http-sync.md), interleaved ``--rounds``
times (single, batch, single, batch...), and prints each round's rate and CPU per event with the
load average; the receiver logs one arrival per change of a batch, so rates count changes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from collections.abc import Callable

import httpx
from confluent_kafka import Consumer, Producer

from bench.common import (
    PYTHON,
    BenchRun,
    EventFactory,
    Proc,
    ReceiverProc,
    Row,
    failed_attempts,
    http_destinations,
    kafka_config,
    log,
    print_rows,
    publish_events,
    start_pipeline,
)
from schemas.codec import codec_for
from schemas.models import AbsenceEvent

WAIT_TIMEOUT = 150.0
"""Upper bound of one measurement (seconds) once the events are published."""


def measure(
    events: int, destinations: int, *, baseline: bool, batch_size: int = 1
) -> tuple[float, float, float, float]:
    """(events per second, peak RSS in MB, CPU ms per event, CPU ms per event in all) of the
    process doing the work.

    CPU per event is counted over the same window as the rate: from the first request's arrival to
    the last (the process's CPU then, divided by the events answered in between), so the one-off
    start-up (imports, group join, the first connector's clients) is left out for both processes, as
    it is from the rate. "In all" is the whole process's CPU, start-up included, divided by the
    events. CPU per event is steadier than the rate on a machine shared with other work."""
    label = "baseline" if baseline else "absync" if batch_size == 1 else f"absync-batch{batch_size}"
    with BenchRun(f"tput-{label}") as run:
        receiver = ReceiverProc(run.workdir)
        try:
            urls = http_destinations(run, receiver.url, destinations, batch_size)
            factory = EventFactory()
            publish_events(run, (factory.event() for _ in range(events)))
            log(f"{label}: {events} events published, {destinations} destination(s)")
            worker = _start_baseline(run, urls, events) if baseline else start_pipeline(run)
            try:
                expected = events * destinations
                receiver.wait_for(1, WAIT_TIMEOUT, stall=WAIT_TIMEOUT)
                first_cpu = worker.cpu_seconds()  # then the count: its error counts against the process
                answered_then = receiver.count()
                if not receiver.wait_for(expected, WAIT_TIMEOUT):
                    log(f"{label}: only {receiver.count()}/{expected} requests arrived")
                peak, cpu = worker.peak_rss_mb(), worker.cpu_seconds()
            finally:
                worker.stop()
            arrivals = receiver.arrivals()
            if not baseline and len(arrivals) < expected:
                for error, count in failed_attempts(run).most_common(5):
                    log(f"{label}: {count} attempt(s) failed: {error}")
        finally:
            receiver.stop()
    span = arrivals[-1].at - arrivals[0].at
    rate = (len(arrivals) - 1) / destinations / span
    in_all = 1000 * cpu / events
    answered = max(1, len(arrivals) - answered_then) / destinations
    cpu_ms = 1000 * (cpu - first_cpu) / answered
    log(
        f"{label}: {rate:.0f} events/s ({len(arrivals)} requests in {span:.1f}s), {cpu_ms:.2f} ms CPU/event"
        f" from the first request on, {in_all:.2f} ms in all"
    )
    return rate, peak, cpu_ms, in_all


def _start_baseline(run: BenchRun, urls: list[str], events: int) -> Proc:
    argv = [PYTHON, "-m", "bench.pipeline_throughput", "--baseline-worker", "--expect", str(events)]
    argv += ["--topic", run.topics.absences, "--status-topic", run.topics.status]
    for url in urls:
        argv += ["--url", url]
    return Proc("baseline", argv, run.env(), run.workdir / "baseline.log")


def baseline_worker(topic: str, status_topic: str, urls: list[str], expect: int) -> None:
    """The hand-written loop: consume, PUT to every URL (keep-alive), produce a status event."""
    consumer = Consumer(
        {
            **kafka_config(),
            "group.id": f"bench-baseline-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    producer = Producer({**kafka_config(), "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    codec = codec_for("AbsenceEvent")
    consumer.subscribe([topic])
    done = 0
    with httpx.Client(timeout=10.0) as client:
        while done < expect:
            batch = consumer.consume(500, 0.1)
            for msg in batch:
                if msg.error() is not None:
                    continue
                event = AbsenceEvent.from_avro(codec.decode(msg.value()))
                body = json.dumps(event.to_json()).encode()
                for url in urls:
                    response = client.put(
                        f"{url}/{event.absence.id}",
                        content=body,
                        headers={"Content-Type": "application/json"},
                    )
                    status = {"absence_id": event.absence.id, "url": url, "status": response.status_code}
                    producer.produce(status_topic, key=event.absence.id.encode(), value=json.dumps(status))
                    producer.poll(0)
                done += 1
            if batch:
                consumer.commit(asynchronous=True)
    producer.flush(30)
    consumer.close()


def compare_batch(events: int, batch_size: int, rounds: int) -> None:
    """Single mode against batch mode, 1 destination, interleaved; one row per measurement."""
    rows: list[Row] = []
    for round_ in range(1, rounds + 1):
        for size in (1, batch_size):
            rate, _, cpu, _ = measure(events, 1, baseline=False, batch_size=size)
            mode = "single" if size == 1 else f"batch_size {size}"
            load = "/".join(f"{x:.1f}" for x in os.getloadavg())
            log(f"round {round_}, {mode}: {rate:.0f} events/s, {cpu:.2f} ms CPU/event, load {load}")
            rows.append(Row(f"round {round_}, {mode}: throughput (load {load})", rate, "events/s"))
            rows.append(Row(f"round {round_}, {mode}: CPU per event", cpu, "ms"))
    print_rows(rows)


Measured = tuple[float, float, float, float]
"""(events per second, peak RSS in MB, CPU ms per event, CPU ms per event in all) of one process,
see :func:`measure`."""


def median_rows(suffix: str, runs: list[tuple[Measured, Measured]]) -> list[Row]:
    """The rows of ``runs`` (absync, baseline) pairs: for throughput and for CPU per event, the run
    whose ratio to its own baseline is the median (its figures and baseline as measured); the
    largest peak RSS; and every run's ratios, so the spread shows."""

    def median_run(ratio: Callable[[Measured, Measured], float]) -> tuple[Measured, Measured]:
        return sorted(runs, key=lambda run: ratio(*run))[len(runs) // 2]

    of = f"median of {len(runs)} run(s)" if len(runs) > 1 else "1 run"
    fast, fast_base = median_run(lambda a, b: a[0] / b[0])
    lean, lean_base = median_run(lambda a, b: a[2] / b[2])
    fat = max(runs, key=lambda run: run[0][1])
    return [
        Row(f"throughput, {suffix} (absync vs baseline, {of})", fast[0], "events/s", fast_base[0]),
        Row(f"CPU per event, {suffix} ({of})", lean[2], "ms", lean_base[2]),
        Row(f"CPU per event with start-up, {suffix} (same run)", lean[3], "ms", lean_base[3]),
        Row(f"peak RSS, throughput worker, {suffix} (largest of {len(runs)})", fat[0][1], "MB", fat[1][1]),
        Row(
            f"throughput ratios of the runs, {suffix}", " / ".join(f"{a[0] / b[0]:.2f}" for a, b in runs), "x"
        ),
        Row(
            f"CPU per event ratios of the runs, {suffix}",
            " / ".join(f"{a[2] / b[2]:.2f}" for a, b in runs),
            "x",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=4000, help="events with 1 destination")
    parser.add_argument("--events-3", type=int, default=2000, help="events with 3 destinations")
    parser.add_argument("--runs", type=int, default=3, help="runs of each, the median is reported (issue 15)")
    parser.add_argument("--baseline-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--status-topic", help=argparse.SUPPRESS)
    parser.add_argument("--url", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=1, help="compare single and batch mode")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds with --batch-size")
    parser.add_argument(
        "--batch-mode", type=int, default=50, help="batch size of the batch-mode runs (0: none)"
    )
    args = parser.parse_args()
    if args.baseline_worker:
        baseline_worker(args.topic, args.status_topic, args.url, args.expect)
        return
    if args.batch_size > 1:
        compare_batch(args.events, args.batch_size, args.rounds)
        return
    started = time.monotonic()
    rows: list[Row] = []
    workloads = [(1, args.events, 1), (3, args.events_3, 1)]
    if args.batch_mode > 1:
        workloads += [(1, args.events, args.batch_mode), (3, args.events_3, args.batch_mode)]
    for destinations, events, size in workloads:
        suffix = "1 destination" if destinations == 1 else f"{destinations} destinations"
        if size > 1:  # not "1 destination" or "3 destinations": run_all's targets find rows by words
            suffix = (
                f"{'one' if destinations == 1 else 'three'} destination(s) in batch mode ({size} per request)"
            )
        runs: list[tuple[Measured, Measured]] = []
        for i in range(1, args.runs + 1):  # baseline and absync side by side in each run
            runs.append(
                (
                    measure(events, destinations, baseline=False, batch_size=size),
                    measure(events, destinations, baseline=True),
                )
            )
            log(f"{suffix}, run {i}/{args.runs}: ratio {runs[-1][0][0] / runs[-1][1][0]:.2f}")
        rows += median_rows(suffix, runs)
    print_rows(rows)
    log(f"pipeline_throughput took {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
