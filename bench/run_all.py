"""Runs every benchmark script present and prints ONE table: figure, value, target (issue 15's, and
the earlier issues' where 15 sets none), met.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092 .venv/bin/python -m bench.run_all   # or: make bench

Each script runs as ``python -m bench.<name>`` in its own process with a time limit, its progress on
stderr; its result rows (``name | figure | unit | baseline | ratio``, see :class:`bench.common.Row`)
are read from its stdout. ``projection_bench`` prints its own lines, translated here. A script that
is missing, fails or runs out of time leaves "not measured: <reason>" in the table. The latency run
gets the maximum throughput measured by the throughput run (it loads the pipeline at 80% of it).
The table is Markdown, ready for docs/performance.md.
"""

from __future__ import annotations

import contextlib
import operator
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.common import PYTHON, REPO, Row, log

SCRIPT_TIMEOUT = 240.0
"""Seconds one script may run (each is designed to take less than 3 minutes)..."""
SCRIPT_TIMEOUTS = {"live_console": 2400.0, "pipeline_throughput": 1500.0}
"""... except these: live_console runs the whole service three times through a 10,000-delivery burst;
pipeline_throughput measures three runs of four processes (issue 15's median of three)."""


@dataclass(frozen=True)
class Target:
    """A target, checked on the first row whose name contains every ``words``
    (lower case); ``source`` is the script expected to print that row."""

    label: str
    words: tuple[str, ...]
    check: Callable[[Row], bool]
    text: str
    source: str


def _ratio_at_least(limit: float) -> Callable[[Row], bool]:
    return lambda row: row.ratio is not None and row.ratio >= limit


def _ratio_at_most(limit: float) -> Callable[[Row], bool]:
    return lambda row: row.ratio is not None and row.ratio <= limit


def _figure(compare: Callable[[float, float], bool], limit: float) -> Callable[[Row], bool]:
    return lambda row: isinstance(row.figure, float) and compare(row.figure, limit)


def _seconds_below(limit_s: float) -> Callable[[Row], bool]:
    scale = {"ms": 0.001, "s": 1.0, "min": 60.0}

    def check(row: Row) -> bool:
        return isinstance(row.figure, float) and row.figure * scale.get(row.unit, 1.0) < limit_s

    return check


RESYNC_TARGETS = [
    Target("resync of 1,000,000 absences", ("resync", "time"), _seconds_below(600), "< 10 min", "resync"),
    Target("live p99 during resync", ("resync", "live", "p99"), _seconds_below(1.0), "< 1 s", "resync"),
    Target("worker RSS, resync", ("resync", "peak rss"), _figure(operator.lt, 150), "< 150 MB", "resync"),
    Target(
        "resync holds the destination's rate_limit",
        ("rate_limit", "most requests"),
        _ratio_at_most(1.0),
        "<= limit + 1 in any 1 s",
        "resync",
    ),
]
"""Issue 15's resync targets: ``make bench-resync`` (:mod:`bench.run_resync`) checks them; the
rate_limit one only when it runs with ``--rate-limit``."""

TARGETS = [
    Target(
        "throughput, 1 destination",
        ("throughput, 1 destination",),
        _ratio_at_least(1.0),
        ">= 1.0 x baseline",
        "pipeline_throughput",
    ),
    Target(
        "CPU per event, 1 destination",
        ("cpu per event, 1 destination",),
        _ratio_at_most(1.0),
        "<= baseline",
        "pipeline_throughput",
    ),
    Target(
        "throughput, 3 destinations",
        ("throughput, 3 destinations",),
        _ratio_at_least(1.0),
        ">= 1.0 x baseline",
        "pipeline_throughput",
    ),
    Target(
        "CPU per event, 3 destinations",
        ("cpu per event, 3 destinations",),
        _ratio_at_most(1.0),
        "<= baseline",
        "pipeline_throughput",
    ),
    *(
        target
        for count, label in (("one", "1 destination"), ("three", "3 destinations"))
        for target in (
            Target(
                f"throughput, {label} in batch mode (absync.v1)",
                (f"throughput, {count} destination(s) in batch mode",),
                _ratio_at_least(1.0),
                ">= 1.0 x baseline",
                "pipeline_throughput",
            ),
            Target(
                f"CPU per event, {label} in batch mode",
                (f"cpu per event, {count} destination(s) in batch mode",),
                _ratio_at_most(1.0),
                "<= baseline",
                "pipeline_throughput",
            ),
        )
    ),
    *(
        Target(f"worker RSS, {label}", words, _figure(operator.lt, 150), "< 150 MB", source)
        for label, words, source in (
            ("throughput, 1 destination", ("peak rss", "1 destination"), "pipeline_throughput"),
            ("throughput, 3 destinations", ("peak rss", "3 destinations"), "pipeline_throughput"),
            ("latency", ("peak rss", "latency worker"), "latency"),
            ("100,000 waiting retries", ("peak rss", "waiting retries"), "waiting_retries"),
        )
    ),
    Target(
        "e2e p99 at 200 events/s", ("e2e latency p99 at 200/s",), _seconds_below(0.05), "< 50 ms", "latency"
    ),
    Target(
        "e2e p99 at 200 events/s, batch mode",
        ("e2e latency p99 at 200/s in batch mode",),
        _seconds_below(0.05),
        "< 50 ms",
        "latency",
    ),
    Target("delay topic: records run early", ("early",), _figure(operator.eq, 0), "0", "delay_precision"),
    Target(
        "delay topic: lateness p99", ("lateness", "p99"), _seconds_below(0.1), "< 100 ms", "delay_precision"
    ),
    Target(
        "waiting retries processed early",
        ("waiting records processed",),
        _figure(operator.eq, 0),
        "0",
        "waiting_retries",
    ),
    Target(
        "slow destination: other's p99", ("slow", "p99"), _seconds_below(1.0), "< 1 s", "slow_destination"
    ),
    Target(
        "live console, 50 clients: throughput",
        ("live console, 50 clients: throughput",),
        _ratio_at_least(0.9),
        ">= 0.9 x no client",
        "live_console",
    ),
    Target(
        "live console, 50 clients: CPU per delivery",
        ("live console, 50 clients: cpu per delivery",),
        _ratio_at_most(1.1),
        "<= 1.1 x no client",
        "live_console",
    ),
    Target(
        "live console, 50 clients: list p95",
        ("live console, 50 clients: list p95",),
        _seconds_below(0.2),
        "< 200 ms",
        "live_console",
    ),
    Target(
        "live console, 50 clients: wrong final views",
        ("live console, 50 clients: wrong final views",),
        _figure(operator.eq, 0),
        "0",
        "live_console",
    ),
    *RESYNC_TARGETS,
]

STOP_GRACE = {"resync": 60.0}
"""Seconds a stopped script has to clean up before SIGKILL (20 by default): bench.resync deletes the
topics of a million absences."""

SCRIPTS = [
    "produce_consume",
    "pipeline_throughput",
    "latency",
    "waiting_retries",
    "delay_precision",
    "slow_destination",
    "projection_bench",
    "live_console",
]
"""``resync`` is not here: ``make bench-resync`` runs it (a million absences, too long for this)."""

SCRIPT_ARGS = {
    "projection_bench": ["--rows", "200000", "--events", "20000"],
}
"""Smaller than the scripts' defaults (live_console: its own, the 10,000-delivery burst of issue 19) to keep ``make bench`` under 15 minutes (filling 1,000,000
rows alone takes over 3 minutes here); run the script alone for the full size."""

_CATCH_UP = re.compile(r"^(\w+)\s+catch-up: (\d+) status events in ([\d.]+)s = ([\d,]+) events/s")
_FILLED = re.compile(r"^(\w+)\s+filled ([\d,]+) deliveries in ([\d.]+)s")
_QUERY = re.compile(r"^(\w+)\s+(.+?)\s+median\s+([\d.]+) ms$")
_SLOW_LATENCY = re.compile(r"^B latency with A hanging.*?p50 ([\d.]+) ms\s+p99 ([\d.]+) ms\s+max ([\d.]+) ms")
_SLOW_THROUGHPUT = re.compile(r"^B throughput: .*= ([\d.]+)/s")


def run_script(name: str, args: list[str], timeout: float | None = None) -> tuple[list[Row], str | None]:
    """(rows, None) or (what it printed, the reason it has no figures). ``timeout``: seconds it may
    run (default: :data:`SCRIPT_TIMEOUTS`, else :data:`SCRIPT_TIMEOUT`); then it is stopped with
    every process it started."""
    if not (REPO / "bench" / f"{name}.py").is_file():
        return [], "script not written yet"
    log(f"running bench.{name} {' '.join(args)}")
    started = time.monotonic()
    timeout = timeout or SCRIPT_TIMEOUTS.get(name, SCRIPT_TIMEOUT)
    # Its own process group: a script that times out is stopped with everything it started (the
    # service, receivers), not only itself; otherwise they keep running and load the next benches.
    proc = subprocess.Popen(
        [PYTHON, "-m", f"bench.{name}", *args],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc, STOP_GRACE.get(name, 20.0))
        stdout, _ = proc.communicate()
        return parse(stdout or ""), f"timed out after {timeout:g}s"
    except BaseException:  # Ctrl-C no longer reaches the script's own session: pass it on
        stop_group(proc, STOP_GRACE.get(name, 20.0))
        raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout)
    log(f"bench.{name} took {time.monotonic() - started:.0f}s (exit {done.returncode})")
    rows = parse(done.stdout)
    if done.returncode != 0:
        return rows, f"exit {done.returncode}"
    return rows, None if rows else "printed no figure"


def stop_group(proc: subprocess.Popen[str], grace: float = 20.0) -> None:
    """SIGTERM to the script's process group, up to ``grace`` s to stop, then SIGKILL to whatever
    is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def parse(output: str) -> list[Row]:
    """Result rows of a script's stdout (uniform rows, or projection_bench's and slow_destination's
    own lines)."""
    rows: list[Row] = []
    for line in output.splitlines():
        row = Row.parse(line)
        if row is not None:
            rows.append(row)
        elif match := _CATCH_UP.match(line):
            rows.append(Row(f"projection catch-up, {match[1]}", float(match[4].replace(",", "")), "events/s"))
        elif match := _FILLED.match(line):
            rows.append(
                Row(f"projection query table, {match[1]}", float(match[2].replace(",", "")), "deliveries")
            )
        elif match := _QUERY.match(line):
            rows.append(Row(f"projection query, {match[1]}: {match[2]}", float(match[3]), "ms"))
        elif match := _SLOW_LATENCY.match(line):
            for quantile, value in zip(("p50", "p99", "max"), match.groups(), strict=True):
                rows.append(Row(f"slow destination: other's latency {quantile}", float(value), "ms"))
        elif match := _SLOW_THROUGHPUT.match(line):
            rows.append(Row("slow destination: other's throughput", float(match[1]), "deliveries/s"))
    return rows


def table(rows: list[Row], problems: dict[str, str], targets: list[Target] | None = None) -> list[str]:
    """The Markdown table: every figure, the targets checked on theirs, missing targets said so."""
    lines = ["| figure | value | baseline | ratio | target | met |", "|---|---|---|---|---|---|"]
    checked: dict[int, Target] = {}
    missing: list[Target] = []
    for target in TARGETS if targets is None else targets:
        index = next(
            (
                i
                for i, r in enumerate(rows)
                if all(w in r.name.lower() for w in target.words) and i not in checked
            ),
            None,
        )
        if index is None:
            missing.append(target)
        else:
            checked[index] = target
    for i, row in enumerate(rows):
        value = row.line().split(" | ")
        checks = checked.get(i)
        met = "-" if checks is None else ("yes" if checks.check(row) else "**no**")
        goal = checks.text if checks else "-"
        lines.append(f"| {row.name} | {value[1]} {row.unit} | {value[3]} | {value[4]} | {goal} | {met} |")
    for target in missing:
        reason = problems.get(target.source, "no such row printed")
        lines.append(
            f"| {target.label} | not measured: bench.{target.source}: {reason} | - | - | {target.text} | - |"
        )
    return lines


def main() -> None:
    started = time.monotonic()
    rows: list[Row] = []
    problems: dict[str, str] = {}
    for name in SCRIPTS:
        args = SCRIPT_ARGS.get(name, [])
        if name == "latency":
            max_rate = next((r.figure for r in rows if r.name.startswith("throughput, 1 destination")), None)
            if isinstance(max_rate, float):
                args = ["--max-rate", f"{max_rate:.1f}"]
        script_rows, problem = run_script(name, args)
        rows += script_rows
        if problem is not None:
            problems[name] = problem
            log(f"bench.{name}: {problem}")
    problems.setdefault("resync", "run `make bench-resync` (too long for `make bench`)")
    sys.stdout.write("\n".join(table(rows, problems)) + "\n")
    log(f"run_all took {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
