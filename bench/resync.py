"""Bulk resync, end to end: one new HTTP destination brought up to date by ``absync resync`` (issue
15's target: 1,000,000 absences in under 10 minutes), while live changes flow to another destination
(their p99 latency under 1 s throughout).

    make bench-resync                                   # 1,000,000 absences (deploy/local/bench-resync.sh)
    make bench-resync ARGS="--absences 20000"           # small
    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092 .venv/bin/python -m bench.resync \\
        [--absences 1000000] [--rate R] [--live-rate 10] [--rate-limit L] [--batch-size N] [--timeout 3600]
        [--no-replay-alone]

Setup (not timed): ``--absences`` distinct new absences are published (:func:`bench.common.publish_many`),
one ``absync run --only fanout --only delivery`` process catches up on them (no destination yet),
then two destinations of the sink (:mod:`bench.sink`) are added: ``/d1`` (live) and ``/d2`` (new,
empty; ``--rate-limit``: its ``rate_limit``; ``--batch-size N``: both in absync.v1 batch mode, whose
items the sink counts one by one). Live absences are published at ``--live-rate`` from then
on, each flushed at once; once one has reached both destinations (the worker knows them), the timed
part starts: ``absync resync --destination bench-d2 --rate R`` as a subprocess (no limit unless
``--rate``), until the sink has received every one of the absences at ``/d2`` (or ``--timeout``).

Prints: the time until ``/d2`` holds everything (end to end, through fan-out and worker; extrapolated
linearly to 1,000,000 when fewer were run), the rate, the command's own duration, the live
destination's latency (publish to arrival) p50/p99/max over the live changes published meanwhile, the
worker's CPU per resynced absence and peak RSS; with ``--rate-limit``, the rate ``/d2`` received and
the most requests it got in any 1 s (the worker allows ``limit x 1 s + 1``); then, with the worker
stopped, the replay alone: ``absync resync`` with no limit (scan + produce to the ``resync`` topic).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from confluent_kafka import Consumer, TopicPartition

from bench.common import (
    PYTHON,
    BenchRun,
    EventFactory,
    Proc,
    Row,
    _free_port,
    http_destinations,
    log,
    percentile,
    print_rows,
    publish_many,
    read_statuses,
    start_pipeline,
)
from bench.latency import hops
from streams.kafka import connection_config, group_id
from streams.publisher import AbsencePublisher

TARGET = 1_000_000
"""The size of issue 15's target (a resync of 1,000,000 absences in under 10 minutes)."""
NO_LIMIT = 1e9
"""The resync command's ``--rate`` when none is given: no limit of its own."""


class SinkProc(Proc):
    """``python -m bench.sink`` on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.arrivals_path = workdir / "arrivals.log"
        argv = [PYTHON, "-m", "bench.sink", "--port", str(self.port), "--log", str(self.arrivals_path)]
        super().__init__("sink", argv, {**os.environ, "PYTHONUNBUFFERED": "1"}, workdir / "sink.log")
        self.wait_for_log("sink listening", timeout=30)

    def stats(self) -> dict[str, dict[str, list[int]]]:
        """``{segment: {id prefix: [requests, distinct ids]}}`` (the arrival log written out first)."""
        doc: dict[str, dict[str, list[int]]] = httpx.get(f"{self.url}/_stats", timeout=30).json()
        return doc

    def distinct(self, segment: str, prefix: str) -> int:
        return self.stats().get(segment, {}).get(prefix, [0, 0])[1]

    def arrivals(self) -> Iterator[tuple[float, str, str]]:
        """(epoch seconds, segment, absence id) of every request, in arrival order."""
        with self.arrivals_path.open() as f:
            for line in f:
                at, _method, path = line.split(" ", 2)
                parts = path.strip().strip("/").split("/")
                yield float(at), parts[0], parts[-1]


@dataclass
class LiveLoad:
    """Live absences published at ``rate`` per second in a thread, each flushed at once."""

    run: BenchRun
    rate: float
    sent: dict[str, float] = field(default_factory=dict)
    """Absence id -> publish time (epoch seconds, just before publishing)."""
    factory: EventFactory = field(default_factory=lambda: EventFactory(seed=9))
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    error: BaseException | None = None

    @property
    def prefix(self) -> str:
        return self.factory.event_prefix

    def start(self) -> LiveLoad:
        self._thread = threading.Thread(target=self._publish, name="live-load", daemon=True)
        self._thread.start()
        return self

    def _publish(self) -> None:
        try:
            with AbsencePublisher(self.run.settings) as publisher:
                due = time.monotonic()
                while not self._stop.is_set():
                    event = self.factory.event()
                    self.sent[event.absence.id] = time.time()
                    publisher.publish(event)
                    publisher.flush()
                    due += 1 / self.rate
                    self._stop.wait(max(0.0, due - time.monotonic()))
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)


@dataclass
class Timed:
    """What the timed part measured."""

    t0: float
    end: float
    command_seconds: float | None
    worker_cpu: float
    worker_peak_mb: float
    live_sent: dict[str, float]


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


def timed_resync(
    run: BenchRun, args: argparse.Namespace, sink: SinkProc, pipeline: Proc, prefix: str, live: LiveLoad
) -> Timed:
    """Runs ``absync resync`` of bench-d2 until the sink holds every absence at /d2."""
    n = args.absences
    rate = args.rate or NO_LIMIT
    argv = [PYTHON, "-m", "absync", "resync", "--destination", "bench-d2", "--rate", f"{rate:g}"]
    shown = "no limit" if rate == NO_LIMIT else f"--rate {rate:g}"
    log(f"resync of {n:,} absences to bench-d2 ({shown}), live load {args.live_rate:g}/s to both")
    cpu0 = pipeline.cpu_seconds()
    t0 = time.time()
    command = Proc("resync", argv, run.env(), run.workdir / "resync.log")
    command_seconds: float | None = None
    last_log = got = 0
    try:
        while time.time() - t0 < args.timeout:
            got = sink.distinct("d2", prefix)
            if command_seconds is None and command.popen.poll() is not None:
                command_seconds = time.time() - t0
                log(f"resync command exited ({command.popen.returncode}) after {command_seconds:.0f}s")
            if got >= n or live.error is not None:
                break
            if time.time() - last_log >= 15:
                last_log = int(time.time())
                elapsed = time.time() - t0
                log(
                    f"{got:,}/{n:,} at /d2 after {elapsed:.0f}s ({got / elapsed:,.0f}/s); worker RSS "
                    f"{pipeline.rss_mb():.0f} MB; load {os.getloadavg()[0]:.1f}"
                )
            time.sleep(0.5)
        end = time.time()
        cpu, peak = pipeline.cpu_seconds() - cpu0, pipeline.peak_rss_mb()
        if got < n:
            log(f"only {got:,}/{n:,} arrived at /d2 in {args.timeout:g}s")
    finally:
        live.stop()
        with contextlib.suppress(Exception):
            command.popen.wait(60)
        command.stop()
    if live.error is not None:
        raise RuntimeError(f"the live load failed: {live.error!r}")
    deadline = time.monotonic() + 60  # the live changes of the last moments reach /d1
    while sink.distinct("d1", live.prefix) < len(live.sent) and time.monotonic() < deadline:
        time.sleep(0.5)
    return Timed(t0, end, command_seconds, cpu, peak, dict(live.sent))


def replay_only(run: BenchRun, n: int) -> list[Row]:
    """``absync resync`` with no rate limit and no worker running: what the replay itself (two
    reads of the topic, decoding, producing) costs, apart from the delivery."""
    http_destinations(run, "http://127.0.0.1:9", 3)  # bench-d3: never delivered to (no worker)
    log(f"replay alone: resync of {n:,} absences to bench-d3 with no rate limit")
    argv = [PYTHON, "-m", "absync", "resync", "--destination", "bench-d3", "--rate", f"{NO_LIMIT:g}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    with Proc("replay", argv, run.env(), run.workdir / "replay.log") as command:
        command.popen.wait()
        seconds = time.time() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = re.search(r"duration ([\d.]+) s", command.log_text())
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    rows = [
        Row(f"resync replay alone (scan + produce, no rate limit), {n:,} absences", seconds, "s"),
        Row("resync replay alone: CPU per absence (the command, start-up included)", 1e6 * cpu / n, "us"),
    ]
    if own is not None and float(own[1]) > 0:
        rows.append(Row("resync replay alone: rate (its own duration)", n / float(own[1]), "absences/s"))
    return rows


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most of ``times`` (sorted) that fall in any ``window`` seconds."""
    best, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


def live_hops(run: BenchRun, sink: SinkProc, timed: Timed) -> list[Row]:
    """Where the live changes to /d1 waited (:func:`bench.latency.hops`: publish -> fan-out ->
    attempt start -> answer), p50 and p99 of each hop."""
    sent = {a: at for a, at in timed.live_sent.items() if at >= timed.t0}
    answered = {a: at for at, segment, a in sink.arrivals() if segment == "d1" and a in sent}
    rows: list[Row] = []
    for hop, times in hops(read_statuses(run, "bench-d1"), sent, answered).items():
        if times:
            rows += [
                Row(f"  resync: live hop {hop} p50", percentile(times, 50), "ms"),
                Row(f"  resync: live hop {hop} p99", percentile(times, 99), "ms"),
            ]
    return rows


def rows_for(
    args: argparse.Namespace, sink: SinkProc, prefix: str, live_prefix: str, timed: Timed
) -> list[Row]:
    """The result rows; "resync time" and "resync: live p99" are the ones issue 15's targets read."""
    n = args.absences
    replayed: list[float] = []
    replayed_ids: set[str] = set()
    to_d2: list[float] = []
    live_ms: list[float] = []
    for at, segment, absence_id in sink.arrivals():
        if segment == "d2" and at >= timed.t0:
            to_d2.append(at)
            if absence_id.startswith(prefix):
                replayed.append(at)
                replayed_ids.add(absence_id)
        elif segment == "d1" and (sent := timed.live_sent.get(absence_id)) is not None and sent >= timed.t0:
            live_ms.append((at - sent) * 1000)
    if not replayed:
        return [Row("resync time, 1,000,000 absences", "not measured: nothing arrived", "s")]
    delivered = len(replayed_ids)
    seconds = max(replayed) - timed.t0
    rate = delivered / seconds
    rows: list[Row] = []
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
        Row(
            "resync: worker CPU per resynced absence (fan-out + delivery)", 1000 * timed.worker_cpu / n, "ms"
        ),
        Row("resync: worker peak RSS", timed.worker_peak_mb, "MB"),
    ]
    if timed.command_seconds is not None:
        rows.append(Row(f"resync command, {n:,} absences (until it exits)", timed.command_seconds, "s"))
    if live_ms:
        rows += [
            Row(
                f"resync: live p99 latency, other destination ({len(live_ms)} changes)",
                percentile(live_ms, 99),
                "ms",
            ),
            Row("resync: live p50 latency, other destination", percentile(live_ms, 50), "ms"),
            Row("resync: live max latency, other destination", max(live_ms), "ms"),
        ]
    else:
        rows.append(Row("resync: live p99 latency, other destination", "not measured: none arrived", "ms"))
    if args.rate_limit:
        span = max(replayed) - min(replayed)
        rows += [
            Row(
                f"resync with rate_limit {args.rate_limit:g}/s: rate at /d2",
                (len(to_d2) - 1) / span,
                "requests/s",
            ),
            Row(
                f"resync with rate_limit {args.rate_limit:g}/s: most requests at /d2 in 1 s (vs limit + 1)",
                float(max_in_window(sorted(to_d2))),
                "requests",
                args.rate_limit + 1,
            ),
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--absences", type=int, default=TARGET, help="absences to resync")
    parser.add_argument("--rate", type=float, help="the resync command's --rate (default: no limit)")
    parser.add_argument("--live-rate", type=float, default=10.0, help="live absences/s meanwhile")
    parser.add_argument("--rate-limit", type=float, help="rate_limit of the resynced destination (req/s)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds the resync may take")
    parser.add_argument("--batch-size", type=int, default=1, help="both destinations in absync.v1 batch mode")
    parser.add_argument("--no-replay-alone", dest="replay_alone", action="store_false")
    args = parser.parse_args()
    # Stopped (run_all's time limit, Ctrl-C): unwind, so the children stop and the topics go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    n = args.absences
    with BenchRun("resync") as run:
        sink = SinkProc(run.workdir)
        pipeline: Proc | None = None
        live: LiveLoad | None = None
        try:
            pipeline = start_pipeline(run)
            started = time.monotonic()
            prefix = publish_many(run, n)
            took = time.monotonic() - started
            log(f"published {n:,} absences in {took:.1f}s ({n / took:,.0f}/s); waiting for the fan-out")
            started = time.monotonic()
            wait_fanned_out(run, args.timeout)
            log(f"fan-out caught up in {time.monotonic() - started:.0f}s")
            limits = {2: args.rate_limit} if args.rate_limit else None
            http_destinations(run, sink.url, 2, args.batch_size, rate_limits=limits)
            live = LiveLoad(run, args.live_rate).start()
            deadline = time.monotonic() + 120
            while min(sink.distinct(d, live.prefix) for d in ("d1", "d2")) == 0:  # the worker knows both
                if time.monotonic() > deadline or live.error is not None:
                    raise RuntimeError(f"no live change reached both destinations in 120 s ({live.error!r})")
                time.sleep(0.2)
            timed = timed_resync(run, args, sink, pipeline, prefix, live)
            rows = rows_for(args, sink, prefix, live.prefix, timed)
            rows += live_hops(run, sink, timed)
        finally:
            if live is not None:
                live.stop()
            if pipeline is not None:
                pipeline.stop()
            sink.stop()
        if args.replay_alone:
            rows += replay_only(run, n)
    print_rows(rows)


if __name__ == "__main__":
    main()
