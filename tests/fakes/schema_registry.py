"""A Confluent-compatible schema registry on loopback: ``GET /schemas/ids/{id}`` as the real one
answers it (200 ``{"schema": "..."}``, plus ``"schemaType"`` for a non-Avro schema; 404 with error code
40403), and, with ``password`` set, HTTP basic auth as the real one checks it (401, error code 401).
``POST /subjects/{subject}/versions`` registers a schema (200 ``{"id": n}``, the same id for the same
text); ``fail_registrations`` lists the statuses its next registrations get instead (a 5xx as a real
registry answers while its leader moves: error code 50003)."""

from __future__ import annotations

import base64
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
        self.schema_types: dict[int, str] = {}
        self.requests: list[str] = []
        self.authorizations: list[str | None] = []
        self.username = "absync"
        self.password: str | None = None
        self.fail_registrations: list[int] = []
        self.registrations: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: SchemaRegistry

    def do_POST(self) -> None:
        length = min(int(self.headers.get("Content-Length") or 0), 1 << 20)
        request = json.loads(self.rfile.read(length) or b"{}")
        self.server.requests.append(self.path)
        body: dict[str, Any]
        if re.fullmatch(r"/subjects/[^/?]+/versions(\?.*)?", self.path) is None:
            status, body = 404, {"error_code": 404, "message": "HTTP 404 Not Found"}
        elif self.server.fail_registrations:
            status = self.server.fail_registrations.pop(0)
            body = {
                "error_code": 50003,
                "message": "Error while forwarding register schema request to the leader",
            }
        else:
            text = request.get("schema", "")
            self.server.registrations.append(self.path)
            known = [i for i, t in self.server.schemas.items() if t == text]
            schema_id = known[0] if known else max(self.server.schemas, default=0) + 1
            self.server.schemas[schema_id] = text
            status, body = 200, {"id": schema_id}
        self._answer(status, body)

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        authorization = self.headers.get("Authorization")
        self.server.authorizations.append(authorization)
        match = re.fullmatch(r"/schemas/ids/(\d+)", self.path)
        schema_id = int(match.group(1)) if match else -1
        text = self.server.schemas.get(schema_id)
        expected = f"{self.server.username}:{self.server.password}"
        body: dict[str, Any]
        if (
            self.server.password is not None
            and authorization != "Basic " + base64.b64encode(expected.encode()).decode()
        ):
            status, body = 401, {"error_code": 401, "message": "Unauthorized"}
        elif text is None:
            status, body = 404, {"error_code": 40403, "message": "Schema not found"}
        else:
            status, body = 200, {"schema": text}
            if schema_id in self.server.schema_types:
                body["schemaType"] = self.server.schema_types[schema_id]
        self._answer(status, body)

    def _answer(self, status: int, body: dict[str, Any]) -> None:
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
