"""A TCP forwarder on loopback that can be switched off: an outage of the server behind it.

While ``up`` it relays bytes both ways to ``target``; while down it accepts each connection and
closes it at once (the client sees the connection reset or closed with no answer, as when a
registry restarts), counting them in ``refused``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress


class Outage:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = False
        self.refused = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="outage", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.getsockname()[1])

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.up:
                self.refused += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # linger 0: a reset, no answer
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        self._thread.join(5)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@contextmanager
def outage_in_front_of(host: str, port: int) -> Iterator[Outage]:
    """A forwarder to ``host:port``, down until the test sets ``up``."""
    proxy = Outage((host, port))
    proxy._thread.start()
    try:
        yield proxy
    finally:
        proxy.close()
