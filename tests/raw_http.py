"""HTTP/1.1 read off a raw socket, for tests that control the wire themselves (a server that drops a
request, a client that streams an oversized body)."""

from __future__ import annotations

import socket

END_OF_HEAD = b"\r\n\r\n"


def read_head(sock: socket.socket) -> bytes:
    """What ``sock`` sends up to the end of a message's head (and whatever came with it in the last
    read); less, without :data:`END_OF_HEAD`, when the peer closes first."""
    data = b""
    while END_OF_HEAD not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_message(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """One message (request or response) from ``sock``: its head (start line and header lines), its
    headers (names lower-cased) and its body of ``Content-Length`` bytes; what came when the peer
    closes first (an empty head: nothing came)."""
    head, _, body = read_head(sock).partition(END_OF_HEAD)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head.decode("latin-1"), headers, body
