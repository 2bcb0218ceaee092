"""Request bodies are capped before anything reads them (issue 12 item 6), over real HTTP on loopback.

The client is a raw socket, so that the test controls exactly what goes on the wire: a declared
``Content-Length`` over the cap, and a chunked body without one. A body over the cap is answered
413 while the client is still sending it, for anonymous requests too.
"""

from __future__ import annotations

import json
import select
import socket
from urllib.parse import urlsplit

from tests.raw_http import read_message
from tests.web.conftest import Api
from tests.web.test_destinations import body

CAP = 1_000_000
"""ABSYNC_MAX_REQUEST_BYTES's default."""
CHUNK = 64 * 1024
SEND_AT_MOST = 300 * 1024 * 1024
"""What the attacker of the issue sent."""


def _connect(api: Api) -> socket.socket:
    parts = urlsplit(api.base_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    head, headers, rest = read_message(sock)
    return int(head.split("\r\n")[0].split()[1]), headers, rest


def _stream_until_answered(sock: socket.socket, head: bytes, chunked: bool) -> int:
    """Sends ``head`` then up to 300 MB of body until the server answers; the bytes of body sent."""
    sock.sendall(head)
    payload = b"x" * CHUNK
    piece = f"{CHUNK:x}\r\n".encode() + payload + b"\r\n" if chunked else payload
    sent = 0
    while sent < SEND_AT_MOST:
        readable, writable, _ = select.select([sock], [sock], [], 30)
        if readable:
            return sent
        assert writable, "the server neither read nor answered for 30 s"
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return sent
        sent += CHUNK
    return sent


def _post_head(path: str, extra: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}\r\n"
    ).encode()


def test_declared_length_over_the_cap_is_refused_before_reading(api: Api) -> None:
    for path in ("/api/v1/destinations", "/console/session", "/no/such/route"):
        with _connect(api) as sock:
            sent = _stream_until_answered(
                sock, _post_head(path, f"Content-Length: {SEND_AT_MOST}\r\n"), False
            )
            status, headers, answer = _read_response(sock)
        assert status == 413, path
        assert "1000000 bytes" in json.loads(answer)["detail"]
        assert headers["connection"] == "close"
        assert sent < 64 * 1024 * 1024, f"{path}: the client pushed {sent} bytes before the answer"


def test_chunked_body_without_length_is_counted_and_refused(api: Api) -> None:
    for who in (None, "configure"):  # anonymous, and a token that could write
        auth = f"Authorization: Bearer {api.tokens[who]}\r\n" if who else ""
        with _connect(api) as sock:
            head = _post_head("/api/v1/destinations", f"Transfer-Encoding: chunked\r\n{auth}")
            sent = _stream_until_answered(sock, head, True)
            status, _, answer = _read_response(sock)
        assert status == 413, who
        assert "ABSYNC_MAX_REQUEST_BYTES" in json.loads(answer)["detail"]
        assert sent < 64 * 1024 * 1024, f"the client pushed {sent} bytes before the answer"


def test_bodies_under_the_cap_still_work(api: Api) -> None:
    """A chunked body under the cap, and one just under it (refused by validation, not by size)."""
    document = json.dumps({"id": "dst-small", "tenant": "acme", **body()}).encode()
    with _connect(api) as sock:
        head = _post_head(
            "/api/v1/destinations",
            f"Transfer-Encoding: chunked\r\nAuthorization: Bearer {api.tokens['configure']}\r\n",
        )
        sock.sendall(head + f"{len(document):x}\r\n".encode() + document + b"\r\n0\r\n\r\n")
        status, _, answer = _read_response(sock)
    assert status == 201, answer
    with api.client("configure") as admin:
        padded = {"id": "dst-big", "tenant": "acme", **body(), "name": "n" * (CAP - 300)}
        assert len(json.dumps(padded)) < CAP
        answer_ = admin.post("/api/v1/destinations", json=padded)
        assert answer_.status_code == 422 and "at most 400 characters" in answer_.text
        over = admin.post("/api/v1/destinations", json={**padded, "name": "n" * CAP})
        assert over.status_code == 413


def test_the_console_bridge_is_capped_too(api: Api) -> None:
    """The bridge re-enters the app: the cap holds there, and is counted once."""
    with api.client() as anonymous:
        answer = anonymous.post("/console/api/destinations", content=b"{" + b" " * (CAP + 10) + b"}")
    assert answer.status_code == 413
