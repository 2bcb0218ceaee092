"""Bulk resync: time and rate to bring one new destination up to date by replay, and the live
latency of another destination meanwhile.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092 .venv/bin/python -m bench.resync \\
        [--absences 1000000] [--rate 500] [--live-rate 5] [--timeout 900]

Setup (not timed): ``--absences`` realistic absences are published, one ``absync run --only fanout
--only delivery`` process catches up on them (no destination yet), then two destinations of the
loopback receiver are added: ``/d1`` (live) and ``/d2`` (new, empty). Timed: ``absync resync
--destination bench-d2 --rate R`` as a subprocess, while live absences are published at
``--live-rate``; it ends when ``/d2`` has received every replayed absence (or at ``--timeout``).

Prints: the time until the destination holds everything (end to end, through the worker), the rate,
the resync command's own duration at its rate and, with the worker stopped, without rate limit
(what the replay costs: two reads, producing one request per absence to the fan-out), the extrapolation to 1,000,000 absences when
fewer were run (linear: the replay reads each partition twice and sends at a constant rate; the
rate measured end to end is the one extrapolated), and p50/p99 of the live destination.
"""

from __future__ import annotations

import argparse
import itertools
import time

from confluent_kafka import Consumer, TopicPartition

from bench.common import (
    PYTHON,
    BenchRun,
    EventFactory,
    Proc,
    ReceiverProc,
    Row,
    http_destinations,
    log,
    percentile,
    print_rows,
    publish_events,
    start_pipeline,
)
from streams.kafka import connection_config, group_id
from streams.publisher import AbsencePublisher

TARGET = 1_000_000
"""The size of issue [H]'s target (a resync of 1,000,000 absences in under 10 minutes)."""


def wait_fanned_out(run: BenchRun, timeout: float) -> None:
    """Waits until the fan-out has committed every record of ``absences``."""
    topic = run.topics.absences
    consumer = Consumer({**connection_config(run.settings), "group.id": group_id(run.settings, "fanout")})
    try:
        partitions = list(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in partitions
        }
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=30)
            if all(tp.offset >= ends[tp.partition] for tp in committed):
                return
            time.sleep(1)
        raise TimeoutError(f"the fan-out did not catch up on {sum(ends.values())} absences in {timeout:g}s")
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--absences", type=int, default=TARGET, help="absences to resync")
    parser.add_argument("--rate", type=float, default=500.0, help="the resync's --rate (deliveries/s)")
    parser.add_argument("--live-rate", type=float, default=5.0, help="live absences/s meanwhile")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds the resync may take")
    args = parser.parse_args()
    n = args.absences
    with BenchRun("resync") as run:
        receiver = ReceiverProc(run.workdir)
        pipeline = start_pipeline(run)
        try:
            bulk = EventFactory(seed=5)
            first = bulk.event()
            prefix = first.absence.id.rsplit("-", 1)[0] + "-"
            log(f"publishing {n} absences")
            started = time.monotonic()
            publish_events(run, itertools.chain([first], (bulk.event() for _ in range(n - 1))))
            log(f"published in {time.monotonic() - started:.0f}s; waiting for the fan-out to catch up")
            wait_fanned_out(run, args.timeout)
            http_destinations(run, receiver.url, 2)
            time.sleep(2)  # the worker's destination table sees both
            live = EventFactory(seed=9)
            sent: dict[str, float] = {}
            log(f"resync of {n} absences to bench-d2 at --rate {args.rate:g}, live load {args.live_rate:g}/s")
            argv = [PYTHON, "-m", "absync", "resync", "--destination", "bench-d2", "--rate", str(args.rate)]
            t0 = time.time()
            command = Proc("resync", argv, run.env(), run.workdir / "resync.log")
            command_seconds: float | None = None
            with AbsencePublisher(run.settings) as publisher:
                while time.time() - t0 < args.timeout:
                    event = live.event()
                    sent[event.absence.id] = time.time()
                    publisher.publish(event)
                    publisher.flush()
                    if command_seconds is None and command.popen.poll() is not None:
                        command_seconds = time.time() - t0
                        log(
                            f"resync command done in {command_seconds:.0f}s (exit {command.popen.returncode})"
                        )
                    if receiver.count() >= n + 2 * len(sent):
                        break
                    time.sleep(1 / args.live_rate)
            receiver.wait_for(n + 2 * len(sent), 30)
            command.popen.wait(60)
            command_seconds = command_seconds or time.time() - t0
            command.stop()
            arrivals = receiver.arrivals()
        finally:
            pipeline.stop()
            receiver.stop()
        replay_seconds = replay_only(run, n)
    replayed = [a.at for a in arrivals if a.path.startswith("/d2/") and a.absence_id.startswith(prefix)]
    live_ms = [
        (a.at - sent[a.absence_id]) * 1000
        for a in arrivals
        if a.path.startswith("/d1/") and a.absence_id in sent
    ]
    rows = rows_for(n, len(replayed), (max(replayed) - t0) if replayed else None, command_seconds, live_ms)
    rows.append(
        Row(f"resync replay alone (scan + produce, no rate limit), {n:,} absences", replay_seconds, "s")
    )
    print_rows(rows)


def replay_only(run: BenchRun, n: int) -> float:
    """Seconds ``absync resync`` takes with no rate limit and no worker running: what the replay
    itself (two reads of the topic, decoding, producing) costs, apart from the delivery."""
    http_destinations(run, "http://127.0.0.1:9", 3)  # bench-d3: never delivered to (no worker)
    log(f"replay alone: resync of {n} absences to bench-d3 with no rate limit")
    argv = [PYTHON, "-m", "absync", "resync", "--destination", "bench-d3", "--rate", "1e9"]
    started = time.time()
    with Proc("replay", argv, run.env(), run.workdir / "replay.log") as command:
        command.popen.wait()
    return time.time() - started


def rows_for(
    n: int, delivered: int, seconds: float | None, command_seconds: float | None, live_ms: list[float]
) -> list[Row]:
    """The result rows; the row named "resync time" is the one issue [H]'s target reads."""
    rows: list[Row] = []
    if seconds is None or delivered == 0:
        return [Row("resync time, 1,000,000 absences", "not measured: nothing arrived", "s")]
    rate = delivered / seconds
    if delivered < n:
        name = f"resync time, 1,000,000 absences (extrapolated: only {delivered:,}/{n:,} arrived in time)"
        rows.append(Row(name, TARGET / rate, "s"))
    elif n >= TARGET:
        rows.append(Row("resync time, 1,000,000 absences", seconds, "s"))
    else:
        rows.append(Row(f"resync time, 1,000,000 absences (extrapolated from {n:,})", TARGET / rate, "s"))
    rows += [
        Row(f"resync end to end, {delivered:,} absences delivered, measured", seconds, "s"),
        Row("resync rate, end to end (to the receiver)", rate, "absences/s"),
    ]
    if command_seconds is not None:
        rows.append(
            Row(f"resync command at its --rate, {n:,} absences (until it exits)", command_seconds, "s")
        )
    if live_ms:
        rows += [
            Row("resync: live p99 latency, other destination", percentile(live_ms, 99), "ms"),
            Row("resync: live p50 latency, other destination", percentile(live_ms, 50), "ms"),
        ]
    return rows


if __name__ == "__main__":
    main()
