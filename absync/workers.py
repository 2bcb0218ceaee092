"""``absync run --workers N``: N worker processes on one machine, for machines with more cores.

One Python process uses about one core (the GIL): the delivery worker and the fan-out of one process
stop scaling there (docs/performance.md). ``--workers N`` starts N processes of ``absync run``, each a
full consumer in the same consumer groups, so Kafka shares the partitions among them as it would
among N machines; ``ABSYNC_PARTITIONS`` bounds the useful N.

Guarantees
    Which parts scale: the fan-out and the delivery worker (``SCALED``) run in every process; the other
    components (the web server, the projection, the Slack scheduler, the health monitor) run in
    worker 0 only, as in a single process. Each worker has its own stable id, ``<ABSYNC_WORKER_ID or
    host>-<i>``, so its fan-out's transactional id is its own (two workers never fence each other) and
    a restarted worker fences its predecessor's open transaction, as one process does.
    Nothing changes for the records: per-key order, exactly-once bookkeeping and at-least-once
    delivery hold across processes as across machines (docs/architecture.md).
    Stopping: SIGTERM or SIGINT to the supervisor stops every worker with SIGTERM (each finishes its
    in-flight work and commits, as ``absync run`` does) and kills one that has not exited within
    ``STOP_SECONDS``; a Ctrl-C reaches them all (same process group). If one worker exits on its own,
    the supervisor stops the others and exits non-zero, so a supervisor above it (systemd, Docker,
    Kubernetes) restarts the whole; it never restarts a worker in a silent loop.
    Orphans: on Linux each worker gets SIGTERM when the supervisor dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import structlog

from streams.processor import default_worker_id

log = structlog.get_logger(__name__)

SCALED = ("fanout", "delivery")
"""Components that run in every worker: consumers whose groups share partitions among processes."""
STOP_SECONDS = 60.0
"""How long a worker may take to stop after SIGTERM before it is killed."""
_PR_SET_PDEATHSIG = 1


def worker_components(components: Sequence[str], index: int) -> list[str]:
    """The components worker ``index`` runs: all of them in worker 0, the scaled ones elsewhere."""
    return list(components) if index == 0 else [c for c in components if c in SCALED]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGTERM to this process when its parent dies (no orphaned worker)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def run_workers(components: Sequence[str], count: int) -> int:
    """Runs ``count`` workers until SIGTERM/SIGINT or until one exits; the exit code (see module doc)."""
    if not any(c in SCALED for c in components):
        sys.stderr.write(f"absync run: --workers needs one of {', '.join(SCALED)} among the parts\n")
        return 2
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    base = default_worker_id()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(count):
            argv = [sys.executable, "-m", "absync", "run", "--no-create-topics"]
            for name in worker_components(components, index):
                argv += ["--only", name]
            env = {**os.environ, "ABSYNC_WORKER_ID": f"{base}-{index}"}
            workers.append(subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent))
            log.info("worker started", worker=index, pid=workers[-1].pid)
        while not stopping and all(w.poll() is None for w in workers):
            time.sleep(0.2)
        if stopping:  # a Ctrl-C reached the workers too: those that exited already did so cleanly
            return _stop_all(workers)
        exited = [i for i, w in enumerate(workers) if w.poll() is not None]
        log.error("a worker exited: stopping the others", workers=exited)
        return max(1, _stop_all(workers))
    finally:
        _stop_all(workers)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_all(workers: list[subprocess.Popen[bytes]]) -> int:
    """SIGTERM to every running worker, SIGKILL after STOP_SECONDS; the highest exit code."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    codes = []
    for worker in workers:
        try:
            codes.append(worker.wait(max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            log.error("worker did not stop in time: killed", pid=worker.pid)
            worker.kill()
            codes.append(worker.wait())
    # A worker ended by the stop signal itself (still starting, before its handlers) stopped cleanly.
    stopped = (-signal.SIGTERM, -signal.SIGINT)
    return max((0 if c in stopped else abs(c) for c in codes), default=0)
