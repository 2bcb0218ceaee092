"""The HTTP connector on both transports (``ABSYNC_HTTP_TRANSPORT``: httpcore or aiohttp) behaves the
same where it shows: the error an operator reads, one request per recorded call (no resend by the
library), numeric spellings of an allowed address reached. Real sockets on loopback."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from connectors.base import CallRecorder, ConnectorOptions
from connectors.egress import EgressPolicy
from connectors.exceptions import RetryableError
from tests.connectors.deliveries import make_delivery
from tests.connectors.egress_targets import Listener, TcpServer, open_target
from tests.raw_http import read_message

TRANSPORTS = ("httpx", "aiohttp")


class Dropper(TcpServer):
    """Reads each request whole, counts it, and closes the connection without an answer."""

    def __init__(self) -> None:
        self.requests = 0
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            head, _, _ = read_message(conn)
            if head:
                self.requests += 1


@pytest.fixture
def dropper() -> Iterator[Dropper]:
    server = Dropper()
    yield server
    server.close()


def _options(transport: str) -> ConnectorOptions:
    return ConnectorOptions(timeout=3, egress=EgressPolicy.build(["127.0.0.0/8"]), http_transport=transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_dropped_connection_is_one_request_and_reads_as_httpx_says(
    transport: str, dropper: Dropper
) -> None:
    connector = await open_target("http", "127.0.0.1", dropper.port, _options(transport))
    recorder = CallRecorder(connector.secrets)
    try:
        with pytest.raises(RetryableError) as failed:
            await connector.deliver(make_delivery(), recorder)
    finally:
        await connector.close()
    assert "RemoteProtocolError: Server disconnected without sending a response." in failed.value.message
    assert dropper.requests == 1  # a PUT is not sent again by the library
    assert len(recorder.calls) == 1
    assert recorder.calls[0].error == failed.value.message


@pytest.mark.parametrize("host", ["localhost", "127.1", "2130706433", "[::ffff:127.0.0.1]"])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_name_and_numeric_spellings_of_an_allowed_address_are_reached(
    transport: str, host: str
) -> None:
    listener = Listener()
    try:
        connector = await open_target("http", host, listener.port, _options(transport))
        try:
            with pytest.raises(RetryableError) as failed:  # the listener closes at once
                await connector.deliver(make_delivery(), CallRecorder(connector.secrets))
        finally:
            await connector.close()
    finally:
        listener.close()
    assert listener.accepted == 1
    assert "Server disconnected" in failed.value.message or "ReadError" in failed.value.message


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_receivers_cookie_is_not_sent_back(transport: str) -> None:
    """The HTTP connector keeps no cookies (connectors.egress_clients.StatelessClient): each delivery
    stands alone, whatever the receiver set before."""
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            seen.append(self.headers.get("Cookie"))
            self.send_response(200)
            self.send_header("Set-Cookie", "session=abc123; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        connector = await open_target("http", "127.0.0.1", server.server_address[1], _options(transport))
        try:
            for _ in range(2):
                await connector.deliver(make_delivery(), CallRecorder(connector.secrets))
        finally:
            await connector.close()
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [None, None]
