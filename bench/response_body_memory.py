"""Memory of one HTTP delivery whose receiver answers 400 with a huge body (issue 12, item 6).

    .venv/bin/python -m bench.response_body_memory [--megabytes 300]

A loopback server (a thread of this process) answers every request with ``--megabytes`` MB of body;
one ``HttpConnector.deliver`` runs against it. Prints the process's RSS before, its peak (VmHWM)
after, the tracemalloc peak of the delivery, how much the server could write before the client
closed, and the length of the body kept in the attempt record. Self-contained (no broker), so the
same file runs against an older checkout for a before/after comparison:
``cd OLD_CHECKOUT && .venv/bin/python /path/to/bench/response_body_memory.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import socket
import threading
import tracemalloc

from connectors.base import CallRecorder, ConnectorOptions
from connectors.exceptions import ConnectorError
from connectors.http import HttpConnector
from schemas.destination import Destination
from tests.connectors.deliveries import make_delivery


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class _Huge:
    def __init__(self, size: int) -> None:
        self.size, self.sent = size, 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        chunk = b"x" * 65536
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            conn.sendall(f"HTTP/1.1 400 Bad\r\nContent-Length: {self.size}\r\n\r\n".encode())
            while self.sent < self.size:
                conn.sendall(chunk)
                self.sent += len(chunk)
        except OSError:
            pass
        finally:
            conn.close()


async def measure(megabytes: int) -> dict[str, float]:
    server = _Huge(megabytes * 1024 * 1024)
    options = ConnectorOptions(timeout=120)
    if any(f.name == "egress" for f in dataclasses.fields(ConnectorOptions)):
        from connectors.egress import EgressPolicy

        options = dataclasses.replace(options, egress=EgressPolicy.build(["127.0.0.0/8"]))
    destination = Destination(
        id="dst-big",
        tenant="acme",
        name="big",
        kind="http",
        settings={"url": f"http://127.0.0.1:{server.port}/h"},
    )
    connector = HttpConnector(destination, {}, options)
    await connector.setup()
    recorder = CallRecorder()
    rss_before = _status_kb("VmRSS")
    tracemalloc.start()
    with contextlib.suppress(ConnectorError):
        await connector.deliver(make_delivery(), recorder)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    await connector.close()
    kept = recorder.calls[0].response_body or "" if recorder.calls else ""
    return {
        "rss_before_mb": rss_before / 1024,
        "rss_peak_mb": _status_kb("VmHWM") / 1024,
        "tracemalloc_peak_mb": peak / 1e6,
        "server_sent_mb": server.sent / 1e6,
        "kept_chars": len(kept),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=300)
    args = parser.parse_args()
    for name, value in asyncio.run(measure(args.megabytes)).items():
        print(f"{name:22} {value:10.1f}")


if __name__ == "__main__":
    main()
