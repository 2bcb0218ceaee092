"""The state backends of streams/state.py side by side (``ABSYNC_STATE_BACKEND`` memory vs disk).

    .venv/bin/python -m bench.state_store [--keys 200000]      # or: make bench-state ARGS="--keys ..."

Each backend runs in its own subprocess, twice, interleaved (memory, disk, memory, disk), so a
loaded machine weighs on both alike. A run fills one partition map as a restore does (``--keys``
entries of ~450 bytes, the size of a delivery worker's KeyState; then ``finish_load``), then does
``--keys`` puts and ``--keys`` gets of random existing keys, then iterates the partition once, and
reports: restore seconds, puts/s, gets/s, CPU seconds and peak RSS (VmHWM). The Kafka read of a
real restore is left out (it is the same for both backends); this measures what each backend adds.
Both runs hold the list of key names (~100 bytes a key), so peak RSS includes it for both.
Prints one line per run (JSON) and a summary with disk/memory ratios of the medians, on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from streams.state_backend import open_map


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_one(backend: str, keys: int) -> dict[str, float | str]:
    rng = random.Random(7)
    value = bytes(rng.getrandbits(8) for _ in range(450))
    names = [f"dst-{i % 50:02d}|{i:032x}" for i in range(keys)]
    with tempfile.TemporaryDirectory(prefix="absync-bench-state-") as tmp:
        base_rss = _vm_hwm_mb()
        cpu0 = _cpu()
        started = time.perf_counter()
        data = open_map(backend, Path(tmp), "bench-state", 0)
        for i, name in enumerate(names):
            data.set(name, value[:-8] + i.to_bytes(8))  # distinct objects, as restored values are
        data.finish_load()
        restore = time.perf_counter() - started
        picks = [rng.choice(names) for _ in range(keys)]
        started = time.perf_counter()
        for name in picks:
            data.set(name, value)
        puts = keys / (time.perf_counter() - started)
        started = time.perf_counter()
        for name in picks:
            assert data.get(name) is not None
        gets = keys / (time.perf_counter() - started)
        started = time.perf_counter()
        iterated = sum(1 for _ in data.items())
        items_s = time.perf_counter() - started
        assert iterated == keys
        cpu = _cpu() - cpu0
        peak = _vm_hwm_mb()
        data.close()
    return {
        "backend": backend,
        "keys": keys,
        "restore_s": round(restore, 3),
        "puts_per_s": round(puts),
        "gets_per_s": round(gets),
        "items_s": round(items_s, 3),
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(peak, 1),
        "rss_before_mb": round(base_rss, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=["memory", "disk"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.stdout.write(json.dumps(run_one(args.child, args.keys)) + "\n")
        return
    results: dict[str, list[dict[str, float]]] = {"memory": [], "disk": []}
    for _ in range(args.rounds):
        for backend in ("memory", "disk"):
            out = subprocess.run(
                [sys.executable, "-m", "bench.state_store", "--child", backend, "--keys", str(args.keys)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            row = json.loads(out)
            sys.stdout.write(out)
            results[backend].append(row)
    load = os.getloadavg()
    sys.stdout.write(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    for figure in ("restore_s", "puts_per_s", "gets_per_s", "items_s", "cpu_s", "peak_rss_mb"):
        mem = statistics.median(r[figure] for r in results["memory"])
        disk = statistics.median(r[figure] for r in results["disk"])
        sys.stdout.write(f"{figure:12} memory {mem:>12.6g} disk {disk:>12.6g} disk/memory {disk / mem:.2f}\n")


if __name__ == "__main__":
    main()
