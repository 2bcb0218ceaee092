"""Targets for the egress tests: TCP servers on loopback (:class:`TcpServer`: a listener that counts
the connections it gets, an oversized answer, a redirect), and one destination of each kind pointed
at a host and port (every URL a connector has goes there)."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from connectors.base import Connector, ConnectorOptions
from connectors.registry import connector_class
from tests.connectors.deliveries import make_destination
from tests.raw_http import END_OF_HEAD, read_head

KINDS = ("http", "graph", "google", "slack", "adp", "ews")
BEARER = "tok-7f3a9c1e5b2d8f4a6c0e"


class TcpServer:
    """A TCP server on ``address`` (a free port unless ``port`` is given): its thread accepts
    connections and hands each to :meth:`handle`, one after the other, until :meth:`close`. A
    subclass sets its own attributes before calling ``__init__`` (the thread starts there)."""

    def __init__(self, address: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def handle(self, conn: socket.socket) -> None:
        conn.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.handle(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the serving thread
        self.sock.close()
        self._thread.join(5)


class Listener(TcpServer):
    """A TCP server on ``address`` that accepts connections, counts them and closes each at once
    (or, with ``hold``, keeps them open without answering: a hung service)."""

    def __init__(self, address: str = "127.0.0.1", port: int = 0, *, hold: bool = False) -> None:
        self.accepted = 0
        self.hold = hold
        self._held: list[socket.socket] = []
        super().__init__(address, port)

    def handle(self, conn: socket.socket) -> None:
        self.accepted += 1
        if self.hold:
            self._held.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        super().close()
        for conn in self._held:
            conn.close()


def closed_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _service_account() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "p",
            "private_key_id": "k1",
            "private_key": pem,
            "client_email": "absync@p.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
    )


SERVICE_ACCOUNT = _service_account()


def target(kind: str, host: str, port: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Settings and secrets of a ``kind`` destination whose every endpoint is ``host:port``."""
    base = f"{host}:{port}"
    settings: dict[str, Callable[[], tuple[dict[str, Any], dict[str, str]]]] = {
        "http": lambda: ({"url": f"http://{base}/hook", "auth": "bearer"}, {"token": BEARER}),
        "graph": lambda: (
            {
                "tenant_id": "t1",
                "client_id": "c1",
                "authority_host": f"https://{base}",
                "graph_base_url": f"https://{base}/v1.0",
            },
            {"client_secret": "graph-secret-6d1e0a"},
        ),
        "google": lambda: (
            {"token_uri": f"http://{base}/token", "api_root": f"http://{base}/"},
            {"service_account_json": SERVICE_ACCOUNT},
        ),
        "slack": lambda: (
            {"channel": "C1", "base_url": f"http://{base}/api/"},
            {"bot_token": "xoxb-1-2-3abc"},
        ),
        "adp": lambda: (
            {
                "client_id": "c1",
                "token_url": f"https://{base}/auth/oauth/v2/token",
                "api_base_url": f"https://{base}",
                "mutual_tls": False,
            },
            {"client_secret": "adp-secret-0b9f2c"},
        ),
        "ews": lambda: (
            {
                "server_url": f"http://{base}/EWS/Exchange.asmx",
                "username": "svc@acme.com",
                "auth_type": "basic",
                "test_mailbox": "jane@acme.com",
            },
            {"password": "ews-pass-4c8e1a"},
        ),
    }
    return settings[kind]()


async def open_target(kind: str, host: str, port: int, options: ConnectorOptions, **extra: Any) -> Connector:
    values, secrets = target(kind, host, port)
    values.update(extra)
    connector = connector_class(kind)(
        make_destination(kind, values), {k: SecretStr(v) for k, v in secrets.items()}, options
    )
    await connector.setup()
    return connector


class HugeAnswer(TcpServer):
    """An HTTP(S) server on 127.0.0.1 answering every request with ``status`` and a body announced
    (and sent, as long as the client reads) of ``size`` bytes; ``sent`` counts what it wrote."""

    CHUNK = b"x" * 65536

    def __init__(self, size: int, status: int = 400, *, tls: bool = False) -> None:
        self.size, self.status, self.sent = size, status, 0
        self.ca_file: str | None = None
        self._context: ssl.SSLContext | None = None
        if tls:
            ca = trustme.CA()
            self._dir = tempfile.TemporaryDirectory()
            self.ca_file = str(Path(self._dir.name) / "ca.pem")
            ca.cert_pem.write_to_path(self.ca_file)
            self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(self._context)
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            if self._context is not None:
                conn = self._context.wrap_socket(conn, server_side=True)
            if END_OF_HEAD not in read_head(conn):
                return
            head = (
                f"HTTP/1.1 {self.status} Answer\r\nContent-Type: application/json\r\n"
                f"Content-Length: {self.size}\r\n\r\n"
            ).encode()
            conn.sendall(head)
            left = self.size
            while left > 0:
                chunk = self.CHUNK[: min(left, len(self.CHUNK))]
                conn.sendall(chunk)
                self.sent += len(chunk)
                left -= len(chunk)
        except OSError:
            return  # the client stopped reading and closed: what we want
        finally:
            conn.close()


class Redirector(TcpServer):
    """An HTTP server on ``address`` answering every request with ``302 Location: location``."""

    def __init__(self, address: str, location: str) -> None:
        self.location, self.answered = location, 0
        super().__init__(address)

    def handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            conn.sendall(
                f"HTTP/1.1 302 Found\r\nLocation: {self.location}\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            self.answered += 1
