"""A lean HTTP/1.1 receiver for benchmarks that send a million requests.

    python -m bench.sink --port 8766 --log /tmp/arrivals.log

Answers every request at once with ``200 {"ok":true}`` (keep-alive, pipelining), checks and stores
nothing. Per request it appends ``<epoch seconds> <method> <path>`` to ``--log`` (taken once the
request is read; buffered, written every 0.2 s) and counts, per first path segment (``/d2/...``:
``d2``) and absence-id prefix (``abs-1a2b3c-17``: ``abs-1a2b3c``), the requests and the distinct
absence ids (the last path segment). ``GET /_stats`` answers those counts as JSON
(``{"d2": {"abs-1a2b3c": [requests, distinct]}}``) after writing the log out.

Why not ``tests.fakes.receiver``: it keeps every request (headers and body) in memory and logs a
structlog line per request, which at a million requests is gigabytes of memory and a core of its
own; this one keeps a set of ids. It serves absync.v1 in ``rest`` mode (``PUT``/``DELETE``
``/<segment>/<absence id>``), which is what ``bench.resync`` configures, and its batch mode
(``POST /<segment>`` of an ``absync.batch``: each item counted and logged as if it came alone, a
``200`` result for each).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import IO
from urllib.parse import unquote

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
MAX_HEAD = 64 * 1024
"""A request head larger than this closes the connection (a bench sink, not a server)."""


class Sink:
    """The counts and the arrival log."""

    def __init__(self, log: IO[str]) -> None:
        self._log = log
        self._pending: list[str] = []
        self.requests: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.ids: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))

    def record(self, method: str, target: str) -> None:
        path = target.split("?", 1)[0]
        self._pending.append(f"{time.time():.6f} {method} {path}\n")
        parts = path.strip("/").split("/")
        if len(parts) >= 2:
            absence_id = unquote(parts[-1])
            prefix = absence_id.rsplit("-", 1)[0]
            self.requests[parts[0]][prefix] += 1
            self.ids[parts[0]][prefix].add(absence_id)

    def batch(self, target: str, body: bytes) -> bytes:
        """An absync.v1 batch (docs/http-sync.md, "Batch mode"): each item recorded as if it came
        alone (``/<segment>/<absence id>``), answered 200 with a 200 result per item."""
        segment = target.split("?", 1)[0].strip("/").split("/")[0]
        results = []
        for item in json.loads(body)["items"]:
            self.record("POST", f"/{segment}/{item['absence']['id']}")
            results.append({"id": item["delivery_id"], "status": 200})
        answer = json.dumps({"results": results}).encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(answer)}\r\n\r\n"
        return head.encode() + answer

    def write_out(self) -> None:
        if self._pending:
            self._log.writelines(self._pending)
            self._pending.clear()
        self._log.flush()

    def stats(self) -> bytes:
        self.write_out()
        doc = {
            segment: {prefix: [count, len(self.ids[segment][prefix])] for prefix, count in prefixes.items()}
            for segment, prefixes in self.requests.items()
        }
        body = json.dumps(doc).encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        return head.encode() + body


class Connection(asyncio.Protocol):
    """One keep-alive connection: parses request heads and ``Content-Length`` bodies."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        answers: list[bytes] = []
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    self._transport.close()
                break
            head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self._buffer) < end + 4 + length:
                break
            body = bytes(self._buffer[end + 4 : end + 4 + length])
            del self._buffer[: end + 4 + length]
            method, target = [*head[0].split(" "), "", ""][:2]
            if method == "GET" and target == "/_stats":
                answers.append(self._sink.stats())
            elif method == "POST" and body.startswith(b'{"type":"absync.batch"'):
                answers.append(self._sink.batch(target, body))
            else:
                self._sink.record(method, target)
                answers.append(OK)
        if answers:
            self._transport.write(b"".join(answers))


async def serve(host: str, port: int, log_path: Path) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    with log_path.open("a", buffering=1 << 20) as log:
        sink = Sink(log)
        server = await loop.create_server(lambda: Connection(sink), host, port, backlog=1024)
        sys.stdout.write(f"sink listening on http://{host}:{port}\n")
        sys.stdout.flush()

        async def flusher() -> None:
            while True:
                await asyncio.sleep(0.2)
                sink.write_out()

        task = asyncio.create_task(flusher())
        try:
            await stop.wait()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            server.close()
            sink.write_out()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True, help="arrival log (appended)")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.log))


if __name__ == "__main__":
    main()
