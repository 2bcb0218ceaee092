"""``make bench-resync``: :mod:`bench.resync` (1,000,000 absences by default) in a process group of
its own with a generous time limit, then its figures as a table with issue 15's resync targets.

    make bench-resync                                        # deploy/local/bench-resync.sh
    make bench-resync ARGS="--absences 20000 --rate-limit 200"
    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092 .venv/bin/python -m bench.run_resync [--limit 7200] [ARGS...]

Every argument but ``--limit`` goes to :mod:`bench.resync` (see its ``--help``). Past ``--limit``
seconds, or on Ctrl-C, the script is stopped with every process it started (SIGTERM to its process
group, SIGKILL 60 s later), as ``make bench`` does; what it printed until then is still tabled. The
table is Markdown, ready for docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from bench.common import log
from bench.run_all import RESYNC_TARGETS, run_script, table

LIMIT = 7200.0
"""Seconds the whole run may take: a million absences are published and fanned out (minutes), the
resync may take its ``--timeout`` (an hour by default), then the replay runs alone."""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=float, default=LIMIT, help=f"seconds (default {LIMIT:g})")
    args, rest = parser.parse_known_args()
    started = time.monotonic()
    rows, problem = run_script("resync", rest, timeout=args.limit)
    limited = any(a.startswith("--rate-limit") for a in rest)
    targets = [t for t in RESYNC_TARGETS if limited or "rate_limit" not in t.label]
    sys.stdout.write("\n".join(table(rows, {"resync": problem} if problem else {}, targets)) + "\n")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    log(f"bench-resync took {time.monotonic() - started:.0f}s; load average now {load}")


if __name__ == "__main__":
    main()
