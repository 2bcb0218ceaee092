"""HTTP and Graph delivery latency while two Google destinations hang (issue 12, item 3).

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092 .venv/bin/python -m bench.hanging_destination \\
        [--seconds 30] [--google-rate 10] [--timeout 10]

One delivery worker in this process (default concurrency 64, connector timeout ``--timeout``).
Google's token endpoint and API point at a socket that accepts connections and never answers, so
every Google call hangs until the timeout; ``--google-rate`` deliveries per second go to two such
Google destinations. Meanwhile half as many per second go to a Graph destination (the local Graph
fake, real msal) and as many to an HTTP destination (the loopback receiver).
Latency = the SUCCESSFUL status seen on ``delivery-status`` minus the moment the delivery was
produced. Prints the median, p90 and maximum per destination kind; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

from schemas.delivery import Delivery, Status
from schemas.destination import Destination
from schemas.models import ChangeKind
from streams.destinations import publish_destination
from streams.secrets import SecretBox
from streams.settings import Settings
from tests.connectors.deliveries import TENANT
from tests.delivery.harness import Feed, RunningWorker, StatusLog, change, http_destination, isolated
from tests.fakes.google import FakeGoogle
from tests.fakes.graph import FakeGraph
from tests.fakes.receiver import Receiver

EMAIL = "jane@acme.com"


def publish(
    settings: Settings, dest_id: str, kind: str, config: dict[str, object], secrets: dict[str, str]
) -> None:
    box = SecretBox.from_settings(settings)
    publish_destination(
        settings,
        Destination(
            id=dest_id,
            tenant=TENANT,
            name=dest_id,
            kind=kind,
            settings=config,
            secrets={k: box.encrypt(v) for k, v in secrets.items()},
            revision=1,
        ),
    )


def observe(
    statuses: StatusLog, produced: dict[str, tuple[str, float]], seen: dict[str, float], wait: float
) -> None:
    """Reads status events for up to ``wait`` s; notes when each produced delivery is first seen done."""
    statuses.poll(wait)
    now = time.monotonic()
    for delivery_id in produced:
        if delivery_id not in seen and statuses.latest(delivery_id) is Status.SUCCESSFUL:
            seen[delivery_id] = now


def report(produced: dict[str, tuple[str, float]], seen: dict[str, float]) -> None:
    for kind in ("graph", "http"):
        latencies = sorted(seen[d] - t for d, (k, t) in produced.items() if k == kind and d in seen)
        missing = sum(1 for d, (k, _) in produced.items() if k == kind and d not in seen)
        if not latencies:
            print(f"{kind}: none delivered ({missing} missing)")
            continue
        p90 = latencies[int(0.9 * (len(latencies) - 1))]
        print(
            f"{kind}: {len(latencies)} delivered, {missing} missing; latency median "
            f"{statistics.median(latencies):.2f} s, p90 {p90:.2f} s, max {latencies[-1]:.2f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--google-rate", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    with (
        tempfile.TemporaryDirectory() as tmp,
        isolated(
            bootstrap,
            Path(tmp),
            retry_delays="5m,15m,1h,24h",
            connector_timeout=args.timeout,
            delivery_concurrency=64,
        ) as settings,
        socket.create_server(("127.0.0.1", 0), backlog=4096) as black_hole,
        FakeGoogle() as google,
        FakeGraph() as graph,
        Receiver() as receiver,
    ):
        hole = f"http://127.0.0.1:{black_hole.getsockname()[1]}"
        key_file = json.dumps(google.service_account_info())
        for dest_id in ("bench-google-a", "bench-google-b"):
            config = {"token_uri": f"{hole}/token", "api_root": f"{hole}/"}
            publish(settings, dest_id, "google", config, {"service_account_json": key_file})
        graph.add_mailbox(EMAIL)
        publish(settings, "bench-graph", "graph", graph.settings(), {"client_secret": graph.client_secret})
        http_destination(settings, receiver.url + "/hook", dest_id="bench-http")
        statuses = StatusLog(settings)
        feed = Feed(settings)
        produced: dict[str, tuple[str, float]] = {}
        seen: dict[str, float] = {}
        worker = RunningWorker(settings).start()
        try:
            started = time.monotonic()
            tick, n = 2.0 / args.google_rate, 0
            while time.monotonic() - started < args.seconds:
                batch: list[Delivery] = [
                    change(f"g{n}", 1, ChangeKind.APPROVED, destination_id=dest_id, email=EMAIL)
                    for dest_id in ("bench-google-a", "bench-google-b")
                ]
                for kind, dest_id in (("graph", "bench-graph"), ("http", "bench-http")):
                    delivery = change(
                        f"{kind}{n}", 1, ChangeKind.APPROVED, destination_id=dest_id, email=EMAIL
                    )
                    batch.append(delivery)
                    produced[delivery.delivery_id] = (kind, time.monotonic())
                feed.deliveries(*batch)
                n += 1
                while time.monotonic() < started + n * tick:
                    observe(statuses, produced, seen, 0.02)
            deadline = time.monotonic() + 120
            while len(seen) < len(produced) and time.monotonic() < deadline:
                observe(statuses, produced, seen, 0.05)
            report(produced, seen)
        finally:
            try:
                worker.stop()
            except AssertionError as exc:  # the figures are printed; say how the worker ended
                print(f"worker: {exc}")
        statuses.close()


if __name__ == "__main__":
    main()
