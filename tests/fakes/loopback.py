"""A tiny threaded HTTP(S) server on 127.0.0.1 for fakes of external APIs.

A fake is a function from :class:`Request` to :class:`Response`; the server runs it in its own
threads, so the real client libraries (sync or async) talk to it over real sockets.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from connectors.base import ConnectorOptions
from connectors.egress import EgressPolicy

LOOPBACK_EGRESS = EgressPolicy.build(["127.0.0.0/8", "::1/128"])
"""The fakes listen on loopback, which production's egress policy refuses: tests allow it explicitly
(as ABSYNC_ALLOWED_NETWORKS=127.0.0.0/8 would)."""


def loopback_options(timeout: float = 10.0) -> ConnectorOptions:
    """Connector options for talking to a fake on 127.0.0.1."""
    return ConnectorOptions(timeout=timeout, egress=LOOPBACK_EGRESS)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}


@dataclass
class Response:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    """A body sent as is (with the Content-Type in ``headers``), instead of ``body`` as JSON."""

    def encoded(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return b"" if self.body is None else json.dumps(self.body).encode()


Handler = Callable[[Request], Response]


class LoopbackServer:
    """Serves ``handler`` on 127.0.0.1 (an ephemeral port), with TLS when ``ssl_context`` is given."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self._handler = handler
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._request_handler())
        self._server.daemon_threads = True
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _request_handler(self) -> type[BaseHTTPRequestHandler]:
        handler = self._handler

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                url = urlsplit(self.path)
                request = Request(
                    method=self.command,
                    path=url.path,
                    query={k: v[0] for k, v in parse_qs(url.query).items()},
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length) if length else b"",
                )
                response = handler(request)
                payload = response.encoded()
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                if payload and response.raw is None:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                """Silent: tests read the fake's own request log."""

        return _Handler
