"""The live console at scale (issue 19): a burst of deliveries while N consoles follow it live.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092 .venv/bin/python -m bench.live_console \\
        [--deliveries 10000] [--clients 0,10,50]

For each N: the whole service as ``make run`` runs it (``absync run``, every component, SQLite, the
web server in its own process), one HTTP destination on the loopback receiver, N live clients in a
separate process behaving as the console's follow-up page (subscribe to
``/api/v1/deliveries/stream``, then load the first page and the counters, apply the coalesced
batches, reload on ``resync``). Then ``--deliveries`` absence events are published at once, and:

- throughput: deliveries per second at the receiver (first to last request of the burst);
- CPU per delivery: user + system CPU of the service's processes (parent and web child) from the
  publication until the view shows every delivery SUCCESSFUL, divided by the deliveries;
- list-page latency: ``GET /api/v1/deliveries?limit=50`` every 250 ms during the burst, p50 / p95;
- events per client: SSE batches received (and delivery items in them), averaged over clients;
- wrong final views: clients whose rows (every delivery they hold) or counters differ from the view
  once it is final (30 s allowed to converge). Must be 0.

Ratios are against the run with no client, measured in the same invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    PYTHON,
    REPO,
    BenchRun,
    EventFactory,
    Proc,
    ReceiverProc,
    Row,
    _free_port,
    http_destinations,
    log,
    percentile,
    print_rows,
    publish_events,
)

CLIENTS_PER_PROCESS = 100
CONVERGE_SECONDS = 30.0
BURST_TIMEOUT = 900.0
PROBE_SECONDS = 0.25


# -- the clients (a separate process: ``--clients-worker``) -----------------------------------------


class LiveClient:
    """One follow-up page: its rows (delivery id -> status, updated_at) and its counters."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.rows: dict[str, tuple[str, str]] = {}
        self.stats: dict[str, Any] | None = None
        self.batches = 0
        self.items = 0
        self.resyncs = 0
        self.loaded = False
        self.held: list[dict[str, Any]] = []

    def apply(self, batch: dict[str, Any]) -> None:
        for item in batch["items"]:
            self.rows[item["delivery_id"]] = (item["status"], item["updated_at"])
        if batch.get("stats") is not None:
            self.stats = batch["stats"]

    async def load(self) -> None:
        page = (await self.http.get("/api/v1/deliveries", params={"limit": 50})).json()
        stats = (await self.http.get("/api/v1/deliveries/stats")).json()
        self.rows = {d["delivery_id"]: (d["status"], d["updated_at"]) for d in page["items"]}
        self.stats = stats
        for batch in self.held:
            self.apply(batch)
        self.held, self.loaded = [], True

    async def run(self) -> None:
        while True:
            self.loaded, self.held = False, []
            async with self.http.stream("GET", "/api/v1/deliveries/stream") as response:
                if response.status_code != 200:  # e.g. 429: too many streams for the token
                    raise RuntimeError(
                        f"stream refused: {response.status_code} {(await response.aread())[:200]!r}"
                    )
                loader = asyncio.create_task(self.load())
                buffer = b""
                resync = False
                async for chunk in response.aiter_bytes():
                    buffer += chunk
                    *events, buffer = buffer.split(b"\n\n")
                    for event in events:
                        kind, data = b"", b""
                        for line in event.split(b"\n"):
                            if line.startswith(b"event: "):
                                kind = line[7:]
                            elif line.startswith(b"data: "):
                                data = line[6:]
                        if kind == b"deliveries":
                            batch = json.loads(data)
                            self.batches += 1
                            self.items += len(batch["items"])
                            if self.loaded:
                                self.apply(batch)
                            else:
                                self.held.append(batch)
                        elif kind == b"resync":
                            resync = True
                    if resync:
                        break
                await loader
            self.resyncs += 1  # the stream ended (resync or cut): reload, as the page does


async def _all_rows(http: httpx.AsyncClient) -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = (await http.get("/api/v1/deliveries", params=params)).json()
        rows.update((d["delivery_id"], (d["status"], d["updated_at"])) for d in page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return rows


async def clients_worker(base_url: str, token: str, count: int) -> None:
    """Opens ``count`` clients, says ``ready``, runs until ``finish`` on stdin, then prints a JSON
    summary (wrong views counted against the view at that time, after up to CONVERGE_SECONDS)."""
    limits = httpx.Limits(max_connections=4 * count + 10, max_keepalive_connections=2 * count + 10)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=None, limits=limits) as http:
        clients = [LiveClient(http) for _ in range(count)]
        tasks = [asyncio.create_task(c.run()) for c in clients]
        deadline = time.monotonic() + CONVERGE_SECONDS
        while not all(c.loaded for c in clients):
            failed = [t.exception() for t in tasks if t.done() and t.exception() is not None]
            if failed or time.monotonic() > deadline:  # e.g. a stream refused (429): say so, never hang
                loaded = sum(c.loaded for c in clients)
                raise SystemExit(f"only {loaded} of {count} clients loaded: {failed[:1] or 'timed out'}")
            await asyncio.sleep(0.1)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as probe:
            truth = await _all_rows(probe)
            stats = (await probe.get("/api/v1/deliveries/stats")).json()

        def wrong(c: LiveClient) -> bool:
            rows_ok = all(truth.get(k, (None,))[0] == v[0] for k, v in c.rows.items())
            return not (c.loaded and rows_ok and c.stats == stats)

        deadline = time.monotonic() + CONVERGE_SECONDS
        while any(wrong(c) for c in clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        summary = {
            "wrong": sum(wrong(c) for c in clients),
            "batches": [c.batches for c in clients],
            "items": [c.items for c in clients],
            "resyncs": sum(c.resyncs for c in clients),
        }
        for task in tasks:
            task.cancel()
        sys.stdout.write(json.dumps(summary) + "\n")
        sys.stdout.flush()


# -- one measurement ---------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    found, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == parent:
                    found.append(int(entry.name))
                    frontier.append(int(entry.name))
    return found


def _cpu(pids: list[int]) -> float:
    from bench.common import CLOCK_TICKS

    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


class Prober(threading.Thread):
    """The list page, every PROBE_SECONDS, until stopped: its latencies in ms."""

    def __init__(self, base_url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            self.client.get("/api/v1/deliveries", params={"limit": 50}).raise_for_status()
            self.latencies.append(1000 * (time.perf_counter() - started))
            self.stop.wait(PROBE_SECONDS)
        self.client.close()


def _successful(http: httpx.Client) -> int:
    return int(http.get("/api/v1/deliveries/stats").json()["counts"]["SUCCESSFUL"])


def measure(deliveries: int, clients: int) -> dict[str, Any]:
    with BenchRun(f"live-{clients}") as run:
        receiver = ReceiverProc(run.workdir)
        port = _free_port()
        # All the clients share one token: lift the per-token bound of live streams (16 by default).
        env = run.env(
            ABSYNC_HTTP_PORT=str(port),
            ABSYNC_LOG_LEVEL="WARNING",
            ABSYNC_LIVE_STREAMS_PER_TOKEN=str(clients + 1),
        )
        made = subprocess.run(
            [PYTHON, "-m", "absync", "tokens", "create", "--name", "bench", "--right", "view"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        token = made.stdout.strip().splitlines()[-1]
        workers: list[subprocess.Popen[str]] = []
        service = Proc(
            "absync", [PYTHON, "-m", "absync", "run", "--no-create-topics"], env, run.workdir / "absync.log"
        )
        base_url = f"http://127.0.0.1:{port}"
        http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        try:
            http_destinations(run, receiver.url, 1)
            factory = EventFactory()
            publish_events(run, [factory.event()])  # warm-up: the whole path works end to end
            deadline = time.monotonic() + 300
            while True:
                if service.popen.poll() is not None:
                    raise RuntimeError(f"absync exited; see {service.log_path}")
                try:
                    if _successful(http) >= 1:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("the warm-up delivery did not arrive")
                time.sleep(0.5)
            warm = receiver.count()
            for start in range(0, clients, CLIENTS_PER_PROCESS):
                n = min(CLIENTS_PER_PROCESS, clients - start)
                argv = [PYTHON, "-m", "bench.live_console", "--clients-worker", str(n), "--url", base_url]
                worker = subprocess.Popen(
                    [*argv, "--token", token],
                    cwd=REPO,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                workers.append(worker)
            for worker in workers:
                assert worker.stdout is not None
                if worker.stdout.readline().strip() != "ready":
                    raise RuntimeError("a client worker failed to start")
            log(f"{clients} clients live; publishing {deliveries} events")
            pids = _descendants(service.pid)
            cpu_before = _cpu(pids)
            prober = Prober(base_url, token)
            prober.start()
            publish_events(run, (factory.event() for _ in range(deliveries)))
            deadline = time.monotonic() + BURST_TIMEOUT
            while _successful(http) < deliveries + 1:
                if time.monotonic() > deadline or service.popen.poll() is not None:
                    raise TimeoutError(f"the burst did not complete; see {service.log_path}")
                time.sleep(0.5)
            cpu = _cpu(pids) - cpu_before
            prober.stop.set()
            prober.join(60)
            summaries = []
            for worker in workers:
                assert worker.stdin is not None and worker.stdout is not None
                worker.stdin.write("finish\n")
                worker.stdin.flush()
            for worker in workers:
                assert worker.stdout is not None
                summaries.append(json.loads(worker.stdout.readline()))
        finally:
            for worker in workers:
                worker.kill()
                worker.wait(30)
            http.close()
            service.stop(60)
            receiver.stop()
        arrivals = receiver.arrivals()[warm:]
    span = arrivals[-1].at - arrivals[0].at
    batches = [b for s in summaries for b in s["batches"]]
    items = [i for s in summaries for i in s["items"]]
    result = {
        "rate": (len(arrivals) - 1) / span,
        "cpu_ms": 1000 * cpu / deliveries,
        "p50": percentile(prober.latencies, 50),
        "p95": percentile(prober.latencies, 95),
        "batches": sum(batches) / len(batches) if batches else 0.0,
        "items": sum(items) / len(items) if items else 0.0,
        "wrong": sum(s["wrong"] for s in summaries),
        "resyncs": sum(s["resyncs"] for s in summaries),
    }
    log(f"{clients} clients: {json.dumps({k: round(v, 2) for k, v in result.items()})}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deliveries", type=int, default=10000)
    parser.add_argument("--clients", default="0,10,50", help="comma-separated; 0 first is the baseline")
    parser.add_argument("--clients-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients_worker is not None:
        asyncio.run(clients_worker(args.url, args.token, args.clients_worker))
        return
    started = time.monotonic()
    counts = [int(c) for c in args.clients.split(",")]
    if counts[0] != 0:
        counts.insert(0, 0)
    base = measure(args.deliveries, 0)
    rows = [
        Row("live console, 0 clients: throughput", base["rate"], "deliveries/s"),
        Row("live console, 0 clients: CPU per delivery", base["cpu_ms"], "ms"),
        Row("live console, 0 clients: list p50", base["p50"], "ms"),
        Row("live console, 0 clients: list p95", base["p95"], "ms"),
    ]
    print_rows(rows)
    for clients in counts[1:]:
        got = measure(args.deliveries, clients)
        name = f"live console, {clients} clients"
        print_rows(
            [
                Row(f"{name}: throughput", got["rate"], "deliveries/s", base["rate"]),
                Row(f"{name}: CPU per delivery", got["cpu_ms"], "ms", base["cpu_ms"]),
                Row(f"{name}: list p50", got["p50"], "ms", base["p50"]),
                Row(f"{name}: list p95", got["p95"], "ms", base["p95"]),
                Row(f"{name}: events per client", got["batches"], "batches"),
                Row(f"{name}: deliveries per client", got["items"], "items"),
                Row(f"{name}: resyncs", float(got["resyncs"]), "streams"),
                Row(f"{name}: wrong final views", float(got["wrong"]), "clients"),
            ]
        )
    log(f"live_console took {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
