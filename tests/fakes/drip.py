"""A slow-drip HTTP receiver: it answers ``200`` with a large Content-Length, then sends one byte of
the body every ``interval`` seconds, forever (until stopped).

Each read gets a byte well within any read timeout, so only a total deadline on the attempt ends
the call. ``connections`` counts the requests it has started to answer.
"""

from __future__ import annotations

import socket
import threading


class DripReceiver:
    """Use as a context manager; ``url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, interval: float = 0.3) -> None:
        self.interval = interval
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, name="drip-receiver", daemon=True)

    def __enter__(self) -> DripReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            request = b""
            try:
                while b"\r\n\r\n" not in request:  # the request head; the body is never read
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    request += chunk
                with self._lock:
                    self.connections += 1
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
                )
                while not self._stop.wait(self.interval):
                    conn.sendall(b" ")
            except OSError:  # the client gave up
                return
