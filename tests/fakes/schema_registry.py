"""A Confluent-compatible schema registry on loopback: ``GET /schemas/ids/{id}`` as the real one
answers it (200 ``{"schema": "..."}``, 404 with error code 40403)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class SchemaRegistry(ThreadingHTTPServer):
    def __init__(self, schemas: dict[int, str]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.schemas = schemas
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: SchemaRegistry

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        match = re.fullmatch(r"/schemas/ids/(\d+)", self.path)
        text = self.server.schemas.get(int(match.group(1))) if match else None
        if text is None:
            status, body = 404, {"error_code": 40403, "message": "Schema not found"}
        else:
            status, body = 200, {"schema": text}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``server.requests`` instead."""


@contextmanager
def running_registry(schemas: dict[int, str]) -> Iterator[SchemaRegistry]:
    """A registry serving ``{id: schema text}`` until the block ends."""
    server = SchemaRegistry(schemas)
    thread = threading.Thread(target=server.serve_forever, name="schema-registry", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
