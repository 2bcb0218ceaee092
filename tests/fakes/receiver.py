"""A real HTTP receiver on loopback: the far side of the ``http`` connector.

It speaks both formats of docs/http-sync.md and keeps the state a real receiver would hold:

- absync.v1: ``state`` maps absence id -> latest JSON body (``PUT .../{id}`` and ``POST`` of
  ``absence.upserted`` store it, ``DELETE .../{id}`` and ``absence.deleted`` remove it);
- lucca.legacy (``X-Resource-Type: leave``): ``half_days`` maps half-day id -> latest body
  (``X-Event`` created/approved add, deleted removes);
- absync.v1 batch mode (``POST`` of ``{"type":"absync.batch","items":[...]}``): each item is applied
  as a single ``POST`` body would be, deduplicated by its ``delivery_id``, and answered with
  ``{"results":[{"id":..,"status":..}]}``; ``batch_items`` lists every item received (absence id,
  delivery id, status answered). ``fail_items_next`` fails chosen items only. The debug log has one
  ``received`` line per item of a batch (per request otherwise): the benches count changes by it.

It verifies Standard Webhooks signatures when given secrets (401 otherwise), deduplicates by
``webhook-id`` (or ``Idempotency-Key``), counts ``effects`` (state changes) apart from
``duplicates`` (a message id seen again), and records every request with its arrival time.
Failures are injected while it runs: ``fail_next``, ``throttle_next``, ``hang_next``, ``close_next``,
``set_latency``, ``pause``/``resume`` (connection refused).

In tests::

    with Receiver(secrets=[SECRET]) as receiver:
        url = receiver.url + "/hook"

As a script (``make run`` demos): ``python -m tests.fakes.receiver --port 8765 [--secret whsec_...]``;
``GET /_state`` shows what it holds.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog

log = structlog.get_logger(__name__)


def verify_webhook(secrets: list[str], headers: Mapping[str, str], body: bytes, tolerance: int = 300) -> bool:
    """Standard Webhooks check: one ``v1`` signature matches one secret, and the timestamp is fresh.

    ``headers``: lower-case names (or a case-insensitive mapping); ``body``: the raw bytes received.
    """
    msg_id, timestamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not msg_id or not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
        return False  # unsigned, or too old: a replay
    signed = f"{msg_id}.{timestamp}.".encode() + body
    keys = [base64.b64decode(secret.removeprefix("whsec_")) for secret in secrets]
    expected = [base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()) for key in keys]
    entries = headers.get("webhook-signature", "").split()
    received = [entry.removeprefix("v1,").encode() for entry in entries if entry.startswith("v1,")]
    return any(hmac.compare_digest(r, e) for r in received for e in expected)


@dataclass
class ReceivedRequest:
    """One request as it arrived, and what the receiver did with it (``outcome``)."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    arrived_monotonic: float
    arrived_at: dt.datetime
    absence_id: str | None = None
    status: int | None = None  # None: connection closed without an answer
    items: list[tuple[str, int]] = field(default_factory=list)
    """A batch request's items: (absence id, status answered)."""
    outcome: str = "pending"
    """effect | no-change | duplicate | rejected | injected | closed | bad-request | batch"""

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class _Rule:
    """An injected failure for the next ``remaining`` matching requests."""

    remaining: int
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    close: bool = False
    path: str | None = None
    absence_id: str | None = None

    def matches(self, request: ReceivedRequest) -> bool:
        return (self.path is None or request.path.startswith(self.path)) and (
            self.absence_id is None or request.absence_id == self.absence_id
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's 5 overflowed when a worker opened its pools at once

    def __init__(self, address: tuple[str, int], receiver: Receiver) -> None:
        self.receiver = receiver
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout) or a stop() mid-request is expected here: no traceback."""
        log.debug("receiver connection error", client=client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the connector's pooled client expects
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stalls
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.receiver._opened(self.connection)

    def finish(self) -> None:
        self.server.receiver._closed(self.connection)
        super().finish()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            # The sender went away mid-request (a worker killed between headers and body): like any
            # HTTP server, drop the incomplete request instead of acting on a truncated body.
            self.close_connection = True
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        path = urlsplit(self.path).path
        status, reply_headers, reply = self.server.receiver._serve(self.command, path, headers, body)
        if status is None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(status)
        for name, value in reply_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_PUT = do_POST = do_DELETE = do_OPTIONS = do_PATCH = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are recorded in ``Receiver.requests``; no stderr noise."""


class Receiver:
    """A thread-safe loopback receiver; see the module docstring."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, secrets: Sequence[str] = ()) -> None:
        self.host, self.port = host, port
        self.secrets = list(secrets)
        self.state: dict[str, Any] = {}
        self.half_days: dict[str, Any] = {}
        self.requests: list[ReceivedRequest] = []
        self.effects = 0
        self.duplicates = 0
        self._seen: set[str] = set()
        self._rules: list[_Rule] = []
        self._item_rules: list[_Rule] = []
        self.batch_items: list[tuple[str, str, int]] = []
        """(absence id, delivery id, status answered) of every batch item received, in order."""
        self._latency = 0.0
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self.peak_connections = 0
        """The most connections that were open at once."""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        """Starts listening (a free port unless one was given) and returns the base URL."""
        self._stopping.clear()
        self._listen()
        return self.url

    def stop(self) -> None:
        """Stops listening, drops open connections and wakes hanging requests."""
        self._stopping.set()
        self.pause()

    def pause(self) -> None:
        """Stops listening and drops open connections: clients get 'connection refused'."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by the peer
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def resume(self) -> None:
        """Listens again on the same port."""
        self._listen()

    def _listen(self) -> None:
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="receiver", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)
            self.peak_connections = max(self.peak_connections, len(self._connections))

    def _closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    # -- failure injection ----------------------------------------------------------------------

    def fail_next(
        self,
        n: int,
        status: int = 500,
        *,
        retry_after: float | str | None = None,
        path: str | None = None,
        absence_id: str | None = None,
    ) -> None:
        """Answers ``status`` (without applying anything) to the next ``n`` matching requests."""
        headers = {"Retry-After": _retry_after(retry_after)} if retry_after is not None else {}
        self._add(_Rule(n, status=status, headers=headers, path=path, absence_id=absence_id))

    def throttle_next(
        self,
        n: int,
        retry_after: float | str,
        *,
        status: int = 429,
        path: str | None = None,
        absence_id: str | None = None,
    ) -> None:
        """429 (or 503) with ``Retry-After`` (seconds, or an HTTP-date string) for the next ``n``."""
        self.fail_next(n, status, retry_after=retry_after, path=path, absence_id=absence_id)

    def hang_next(
        self, n: int, seconds: float, *, path: str | None = None, absence_id: str | None = None
    ) -> None:
        """Holds the next ``n`` matching requests ``seconds`` before processing them normally: a
        client with a shorter timeout gives up although the receiver applies the change."""
        self._add(_Rule(n, delay=seconds, path=path, absence_id=absence_id))

    def close_next(self, n: int, *, path: str | None = None, absence_id: str | None = None) -> None:
        """Closes the connection without answering the next ``n`` matching requests."""
        self._add(_Rule(n, close=True, path=path, absence_id=absence_id))

    def fail_items_next(
        self,
        n: int,
        status: int = 500,
        *,
        absence_id: str | None = None,
        retry_after: float | None = None,
        error: str = "injected item failure",
    ) -> None:
        """In batch requests: answers ``status`` (the item not applied) for the next ``n`` items
        (of ``absence_id`` only, if given); the rest of each batch is applied as usual."""
        headers = {"error": error} | ({"retry_after": str(retry_after)} if retry_after is not None else {})
        if n > 0:
            with self._lock:
                self._item_rules.append(_Rule(n, status=status, headers=headers, absence_id=absence_id))

    def set_latency(self, seconds: float) -> None:
        """Slows every answer by ``seconds`` (0 to stop)."""
        with self._lock:
            self._latency = seconds

    def clear_failures(self) -> None:
        with self._lock:
            self._rules.clear()
            self._item_rules.clear()
            self._latency = 0.0

    def _add(self, rule: _Rule) -> None:
        if rule.remaining > 0:
            with self._lock:
                self._rules.append(rule)

    def _take_rule(self, request: ReceivedRequest) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(request):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
                    return rule
        return None

    # -- observation ----------------------------------------------------------------------------

    def wait_until(self, predicate: Callable[[Receiver], bool], timeout: float = 30.0) -> bool:
        """Blocks until ``predicate(self)`` holds after some request (or ``timeout``); returns it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "state": dict(self.state),
                "half_days": sorted(self.half_days),
                "effects": self.effects,
                "duplicates": self.duplicates,
                "requests": len(self.requests),
            }

    # -- serving --------------------------------------------------------------------------------

    def _serve(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int | None, dict[str, str], bytes]:
        """Handles one request; returns (status or None to drop the connection, headers, body)."""
        if method == "GET" and path == "/_state":  # inspection, not part of the protocol: not recorded
            return 200, _JSON, json.dumps(self.snapshot(), indent=2).encode()
        request = ReceivedRequest(
            method,
            path,
            headers,
            body,
            time.monotonic(),
            dt.datetime.now(dt.UTC),
            _absence_id(method, path, body),
        )
        with self._lock:
            self.requests.append(request)
        status, reply_headers, reply = self._answer(request)
        with self._changed:
            request.status = status
            self._changed.notify_all()
        if request.items:  # a batch: one line per change it carried (what the benches count)
            for absence_id, item_status in request.items:
                log.debug(
                    "received",
                    method=method,
                    path=path,
                    status=item_status,
                    outcome="batch item",
                    absence_id=absence_id,
                )
        else:
            log.debug("received", method=method, path=path, status=status, outcome=request.outcome)
        return status, reply_headers, reply

    def _answer(self, request: ReceivedRequest) -> tuple[int | None, dict[str, str], bytes]:
        rule = self._take_rule(request)
        if rule is not None and rule.delay:
            self._stopping.wait(rule.delay)
        if rule is not None and rule.close:
            request.outcome = "closed"
            return None, {}, b""
        if rule is not None and rule.status is not None:
            request.outcome = "injected"
            return rule.status, {**_JSON, **rule.headers}, b'{"error":"injected failure"}'
        if self._latency:
            self._stopping.wait(self._latency)
        if self.secrets and not verify_webhook(self.secrets, request.headers, request.body):
            request.outcome = "rejected"
            return 401, _JSON, b'{"error":"bad or missing webhook signature"}'
        if request.method == "OPTIONS":
            request.outcome = "no-change"
            return 204, {"Allow": "OPTIONS, POST, PUT, DELETE"}, b""
        message_id = request.headers.get("webhook-id") or request.headers.get("idempotency-key")
        with self._lock:
            if message_id and message_id in self._seen:
                self.duplicates += 1
                request.outcome = "duplicate"
                return 200, _JSON, b'{"duplicate":true}'
            try:
                if request.method == "POST" and request.headers.get("x-resource-type") != "leave":
                    doc = request.json()
                    if isinstance(doc, dict) and doc.get("type") == "absync.batch":
                        return 200, _JSON, self._apply_batch(request, doc)
                status = self._apply(request)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                request.outcome = "bad-request"
                return 400, _JSON, json.dumps({"error": f"bad request: {exc!r}"}).encode()
            if message_id:
                self._seen.add(message_id)
        return status, _JSON, b'{"ok":true}' if status != 204 else b""

    def _apply(self, request: ReceivedRequest) -> int:
        """Changes the state as a real receiver would; called under the lock."""
        if request.headers.get("x-resource-type") == "leave":
            doc = request.json()
            if request.headers.get("x-event") == "deleted":
                changed = self.half_days.pop(doc["id"], None) is not None
            else:
                changed = self.half_days.get(doc["id"]) != doc
                self.half_days[doc["id"]] = doc
            return self._count(request, changed, 200)
        if request.method == "POST":
            doc = request.json()
            if doc["type"] == "absync.ping":
                return self._count(request, False, 200)
            if doc["type"] == "absence.deleted":
                return self._count(request, self.state.pop(doc["absence"]["id"], None) is not None, 200)
            if doc["type"] == "absence.upserted":
                return self._store(request, doc["absence"]["id"], doc)
            raise ValueError(f"unknown type {doc['type']!r}")
        if request.method == "PUT" and request.absence_id:
            return self._store(request, request.absence_id, request.json())
        if request.method == "DELETE" and request.absence_id:
            if self.state.pop(request.absence_id, None) is None:
                request.outcome = "no-change"
                return 404
            return self._count(request, True, 204)
        raise ValueError(f"{request.method} {request.path} is not part of the protocol")

    def _apply_batch(self, request: ReceivedRequest, doc: dict[str, Any]) -> bytes:
        """Applies each item as a single POST body, deduplicated by its ``delivery_id``; the answer
        of docs/http-sync.md ("Batch mode"). Called under the lock."""
        items = doc["items"]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ValueError("items must be a list of objects")
        for item in items:  # the whole batch is checked before any item is applied
            if item["type"] not in ("absence.upserted", "absence.deleted") or not item["delivery_id"]:
                raise ValueError(f"bad item {str(item)[:100]}")
            str(item["absence"]["id"])
        results: list[dict[str, Any]] = []
        effects = 0
        for item in items:
            delivery_id, absence_id = item["delivery_id"], str(item["absence"]["id"])
            result: dict[str, Any] = {"id": delivery_id}
            rule = self._take_item_rule(absence_id)
            if rule is not None and rule.status is not None:
                result |= {"status": rule.status, **rule.headers}
            elif delivery_id in self._seen:
                self.duplicates += 1
                result["status"] = 200
            else:
                if item["type"] == "absence.deleted":
                    changed, status = self.state.pop(absence_id, None) is not None, 200
                else:
                    changed, status = (
                        self.state.get(absence_id) != item,
                        201 if absence_id not in self.state else 200,
                    )
                    self.state[absence_id] = item
                effects += changed
                self._seen.add(delivery_id)
                result["status"] = status
            self.batch_items.append((absence_id, delivery_id, result["status"]))
            request.items.append((absence_id, result["status"]))
            results.append(result)
        self.effects += effects
        request.outcome = "batch"
        return json.dumps({"results": results}).encode()

    def _take_item_rule(self, absence_id: str) -> _Rule | None:
        for rule in self._item_rules:
            if rule.absence_id is None or rule.absence_id == absence_id:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._item_rules.remove(rule)
                return rule
        return None

    def _store(self, request: ReceivedRequest, absence_id: str, doc: Any) -> int:
        created = absence_id not in self.state
        changed = self.state.get(absence_id) != doc
        self.state[absence_id] = doc
        return self._count(request, changed, 201 if created else 200)

    def _count(self, request: ReceivedRequest, changed: bool, status: int) -> int:
        request.outcome = "effect" if changed else "no-change"
        self.effects += changed
        return status


_JSON = {"Content-Type": "application/json"}


def _retry_after(value: float | str) -> str:
    return value if isinstance(value, str) else str(int(value))


def _absence_id(method: str, path: str, body: bytes) -> str | None:
    """The absence a request is about (for per-absence failures), from the path or the body."""
    if method in ("PUT", "DELETE"):
        return unquote(path.rstrip("/").rsplit("/", 1)[-1]) or None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("absence"), dict):
        return str(doc["absence"].get("id"))
    half_day_id = doc.get("id")
    if isinstance(half_day_id, str) and half_day_id.count("-") >= 2:
        return half_day_id.rsplit("-", 2)[0]  # lucca half-day id: <absence id>-YYYYMMDD-AM|PM
    return None


def main(argv: list[str] | None = None) -> None:
    from streams.logging import configure_logging

    parser = argparse.ArgumentParser(description="Loopback receiver for absync's http connector.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--secret", action="append", default=[], help="whsec_... secret to verify (repeatable)"
    )
    args = parser.parse_args(argv)
    configure_logging("DEBUG")
    receiver = Receiver(host=args.host, port=args.port, secrets=args.secret)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    receiver.start()
    log.info("receiver listening", url=receiver.url, signed_only=bool(args.secret))
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()
        log.info("receiver stopped", **receiver.snapshot())


if __name__ == "__main__":
    main()
