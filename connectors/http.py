"""Generic HTTP connector: any tool that accepts a signed webhook, or Lucca's historical format.

Two wire formats (setting ``format``), documented for receivers in docs/http-sync.md:

- ``absync.v1`` (default): the absence's full latest state as JSON, signed per the Standard
  Webhooks spec. ``method_mode: rest`` sends ``PUT {url}/{absence id}`` (upsert) and
  ``DELETE {url}/{absence id}``; ``method_mode: post`` sends every change as ``POST {url}``.
- ``lucca.legacy``: what receivers of Lucca's HTTP Synchronisation expect: one ``POST {url}`` per
  half-day with ``X-Event: created|approved|deleted``.

Idempotency is the receiver's by design: PUT and DELETE are keyed by absence id, every request
carries ``webhook-id`` and ``Idempotency-Key`` (the delivery id, stable across retries; one id per
half-day in lucca.legacy), so a repeated delivery has no second effect.

``batch_size`` (2..100, absync.v1 only) turns on the batch mode: one signed POST carries up to that
many changes and is answered with a result per change (connectors/http_batch.py).

Connections: up to ``max_connections`` (setting, default 32) per destination, in pools of
``POOL_CONNECTIONS`` httpx clients, a request going to the pool its message id hashes to. httpcore checks
every connection of a pool (a socket poll each) on every request, so one large pool made each request
cost more CPU the more connections it had (bench.pipeline_throughput, docs/performance.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import structlog
from pydantic import SecretStr

from connectors.base import CallRecorder, Connector, ConnectorOptions, DeliveryOutcome
from connectors.declaration import FormField, HttpUrlSetting, KindDeclaration, KindSettings, secret, setting
from connectors.egress_aiohttp import webhook_client
from connectors.exceptions import ConfigurationError, PermanentError, RetryableError
from connectors.http_batch import MAX_BATCH_SIZE, BatchSender, BatchSizeSetting, batch_size_of
from connectors.http_payloads import absync_body, lucca_bodies, lucca_event_name
from connectors.registry import register
from connectors.wire import Answer, send_recorded, status_error
from schemas.delivery import RESPONSE_BODY_LIMIT, Delivery, Operation
from schemas.destination import Destination
from streams.settings import parse_duration

log = structlog.get_logger(__name__)

FORMATS = ("absync.v1", "lucca.legacy")
METHOD_MODES = ("rest", "post")
AUTH_MODES = ("none", "basic", "bearer", "header")
SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24  # Standard Webhooks: secrets are 24 to 64 random bytes
RETRYABLE_STATUSES = frozenset({408, 425, 429})
EXCERPT_CHARS = 300
DEFAULT_MAX_CONNECTIONS = 32
POOL_CONNECTIONS = 4
"""Connections per httpx client: measured on the worker, 1.8 ms of CPU per delivered event with pools
of 4 connections, 2.0 ms with 8 and 4.5 ms with one pool of 32 (its cost grows with its size)."""


@dataclass(frozen=True, slots=True)
class _Request:
    """One HTTP call a delivery needs (lucca.legacy needs one per half-day)."""

    method: str
    url: str
    message_id: str
    body: bytes | None
    headers: Mapping[str, str]


def parse_signing_secrets(raw: str) -> list[bytes]:
    """``whsec_<base64>`` secrets, newest first -> their key bytes.

    Secrets are separated by commas, spaces or new lines (any mix): base64 holds none of them, and
    the console, YAML and API all accept the same text.
    """
    keys: list[bytes] = []
    for part in re.split(r"[,\s]+", raw):
        if not part:
            continue
        if not part.startswith(SECRET_PREFIX):
            raise ConfigurationError(f"a signing secret must start with {SECRET_PREFIX!r}")
        try:
            key = base64.b64decode(part.removeprefix(SECRET_PREFIX), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError("a signing secret is not valid base64 after 'whsec_'") from None
        if len(key) < MIN_SECRET_BYTES:
            raise ConfigurationError(f"a signing secret must hold at least {MIN_SECRET_BYTES} bytes")
        keys.append(key)
    return keys


def sign(keys: list[bytes], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,<base64 HMAC-SHA256>`` per key, space-separated."""
    content = f"{message_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode() for key in keys
    )


def to_json_bytes(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


# -- the connector ----------------------------------------------------------------------------------


class HttpSettings(KindSettings):
    url: HttpUrlSetting = setting("Where absence changes are sent (required).")
    format: Any = setting(f"Payload format: {', '.join(FORMATS)} (default {FORMATS[0]}).")
    method_mode: Any = setting("rest: PUT/DELETE {url}/{absence id}; post: POST {url} for every change.")
    auth: Any = setting(f"Authentication: {', '.join(AUTH_MODES)}.")
    auth_header_name: Any = setting("The header carrying the secret auth_header_value (auth: header).")
    timeout: Any = setting("One call's timeout, e.g. 10s (default: the service's).")
    x_version: Any = setting("lucca.legacy: the X-Version header (default 1).")
    max_connections: Any = setting(f"Connections to the receiver (default {DEFAULT_MAX_CONNECTIONS}).")
    batch_size: BatchSizeSetting = setting(
        f"absync.v1 batch mode: up to this many changes per request, 2 to {MAX_BATCH_SIZE} (default 1: off)."
    )


DECLARATION = KindDeclaration(
    kind="http",
    label="Webhook (HTTP)",
    settings=HttpSettings,
    secrets=(
        secret(
            "signing_secrets",
            "Signing secrets",
            "whsec_..., newest first; several (separated by commas or spaces) during a rotation.",
        ),
        secret("username", "Basic user name"),
        secret("password", "Basic password"),
        secret("token", "Bearer token"),
        secret("auth_header_value", "Authentication header value"),
    ),
    form=(
        FormField("url", "URL", "url", required=True, help="Where absence changes are sent."),
        FormField("format", "Payload format", "select", options=FORMATS),
        FormField(
            "method_mode", "Method", "select", options=METHOD_MODES, help="rest: PUT/DELETE per absence."
        ),
        FormField("auth", "Authentication", "select", options=AUTH_MODES),
        FormField("auth_header_name", "Authentication header name", help="Only for header authentication."),
        FormField("timeout", "Timeout", help="e.g. 10s; empty: the service default."),
        FormField(
            "batch_size",
            "Batch size",
            "number",
            help=f"absync.v1 only: 2 to {MAX_BATCH_SIZE} changes a request.",
        ),
    ),
    endpoint_settings=("url",),
)


@register
class HttpConnector(Connector):
    """Sends absence changes to one HTTP endpoint (see the module docstring and docs/http-sync.md)."""

    declaration = DECLARATION

    def __init__(
        self,
        destination: Destination,
        secrets: Mapping[str, SecretStr],
        options: ConnectorOptions | None = None,
    ) -> None:
        super().__init__(destination, secrets, options)
        self.url = self._url()
        self.format = self._choice("format", FORMATS)
        self.method_mode = self._choice("method_mode", METHOD_MODES)
        self.x_version = str(self.setting("x_version", "1"))
        self.timeout = self._timeout()
        self.call_timeout = self.timeout  # the attempt deadline follows this destination's own timeout
        self.auth_headers = self._auth_headers()
        raw_keys = self.secrets.get("signing_secrets")
        self.signing_keys = parse_signing_secrets(raw_keys.get_secret_value()) if raw_keys else []
        self.max_connections = self.count_setting("max_connections", DEFAULT_MAX_CONNECTIONS)
        self.batch_size = batch_size_of(self.settings, self.destination.id, self.format)
        self._clients: list[httpx.AsyncClient] = []
        self._batches: BatchSender | None = None

    def _url(self) -> str:
        url = str(self.setting("url", required=True)).rstrip("/")
        try:
            parsed: httpx.URL | None = httpx.URL(url)
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigurationError(
                f"destination {self.destination.id}: url must be http(s)://host/..., got {url!r}"
            )
        return url

    def _choice(self, name: str, allowed: tuple[str, ...]) -> str:
        value = str(self.setting(name, allowed[0]))
        if value not in allowed:
            raise ConfigurationError(
                f"destination {self.destination.id}: {name} must be one of {', '.join(allowed)}, got {value!r}"
            )
        return value

    def _timeout(self) -> float:
        raw = self.setting("timeout")
        if raw is None:
            return self.options.timeout
        try:
            seconds = parse_duration(raw) if isinstance(raw, str) else float(raw)
        except (TypeError, ValueError):
            seconds = 0.0
        if seconds <= 0:
            raise ConfigurationError(
                f"destination {self.destination.id}: timeout must be positive, got {raw!r}"
            )
        return seconds

    def _auth_headers(self) -> dict[str, str]:
        """Headers proving who we are; every value here comes from a secret and is masked in records."""
        auth = self._choice("auth", AUTH_MODES)
        if auth == "basic":
            pair = f"{self.secret('username')}:{self.secret('password')}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        if auth == "bearer":
            return {"Authorization": "Bearer " + self.secret("token")}
        if auth == "header":
            name = str(self.setting("auth_header_name", required=True))
            return {name: self.secret("auth_header_value")}
        return {}

    async def setup(self) -> None:
        pools, rest = divmod(self.max_connections, POOL_CONNECTIONS)
        sizes = [POOL_CONNECTIONS] * pools + ([rest] if rest else [])
        tls = httpx.create_ssl_context()  # what each client would load by itself (CA bundle: ~30 ms each)
        self._clients = [
            webhook_client(
                self.options.http_transport,
                self.options.egress,
                timeout=httpx.Timeout(self.timeout),
                follow_redirects=False,
                limits=httpx.Limits(
                    max_connections=size, max_keepalive_connections=size, keepalive_expiry=30.0
                ),
                headers={"User-Agent": self.options.user_agent},
                verify=tls,
            )
            for size in sizes
        ]
        if not self.signing_keys and self.format == "absync.v1":
            log.warning("http destination sends unsigned requests", destination=self.destination.id)
        if self.batch_size > 1:  # connectors/http_batch.py
            self._batches = BatchSender(
                self.url,
                lambda message_id, body: self._prepare(_Request("POST", self.url, message_id, body, {})),
                lambda delivery: to_json_bytes(absync_body(delivery)),
                size=self.batch_size,
                timeout=self.timeout,
                deadline=self.attempt_deadline,
                secret_headers=[*self.auth_headers, "webhook-signature"],
                name=f"http:{self.destination.id}",
            )

    async def close(self) -> None:
        if self._batches is not None:  # first: its waiting and in-flight items fail retryably
            await self._batches.close()
        clients, self._clients = self._clients, []
        for client in clients:
            await client.aclose()

    # -- deliveries ---------------------------------------------------------------------------------

    async def deliver(self, delivery: Delivery, recorder: CallRecorder) -> DeliveryOutcome:
        if self._batches is not None:
            return await self._batches.deliver(delivery, recorder)
        deleting = delivery.operation is Operation.DELETE
        requests = (
            self._lucca_requests(delivery)
            if self.format == "lucca.legacy"
            else [self._absync_request(delivery)]
        )
        statuses = []
        for request in requests:
            response = await self._send(request, recorder)
            self._raise_for_status(request, response, deleting=deleting)
            statuses.append(response.status_code)
        if self.format == "lucca.legacy":
            event = requests[0].headers["X-Event"]
            summary = f"{len(requests)} half-day call(s) with X-Event {event} answered {_counts(statuses)}"
            return DeliveryOutcome(summary=summary, details={"calls": len(requests), "statuses": statuses})
        first = requests[0]
        return DeliveryOutcome(
            summary=f"{first.method} {first.url} answered {statuses[0]}",
            external_id=first.url if self.method_mode == "rest" else None,
            details={"status": statuses[0]},
        )

    def _absync_request(self, delivery: Delivery) -> _Request:
        body = to_json_bytes(absync_body(delivery))
        if self.method_mode == "post":
            return _Request("POST", self.url, delivery.delivery_id, body, {})
        method = "DELETE" if delivery.operation is Operation.DELETE else "PUT"
        # DELETE carries the last known state too: receivers may log it, and it is what is signed.
        return _Request(
            method, f"{self.url}/{quote(delivery.absence_id, safe='')}", delivery.delivery_id, body, {}
        )

    def _lucca_requests(self, delivery: Delivery) -> list[_Request]:
        headers = {
            "X-Version": self.x_version,
            "X-Resource-Type": "leave",
            "X-Event": lucca_event_name(delivery),
        }
        return [
            _Request("POST", self.url, f"{delivery.delivery_id}.{doc['id']}", to_json_bytes(doc), headers)
            for doc in lucca_bodies(delivery.event)
        ]

    def _prepare(self, request: _Request) -> tuple[httpx.AsyncClient, httpx.Request]:
        """The client ``request`` goes through and the request itself, signed with a fresh timestamp."""
        if not self._clients:
            raise RuntimeError("HttpConnector.setup() was not awaited")
        client = self._clients[zlib.crc32(request.message_id.encode()) % len(self._clients)]
        headers = {**self.auth_headers, **request.headers, "Idempotency-Key": request.message_id}
        if request.body is not None:
            headers["Content-Type"] = "application/json"
        if self.signing_keys:
            timestamp = int(time.time())
            headers["webhook-id"] = request.message_id
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = sign(
                self.signing_keys, request.message_id, timestamp, request.body or b""
            )
        return client, client.build_request(
            request.method, request.url, content=request.body, headers=headers
        )

    async def _send(self, request: _Request, recorder: CallRecorder) -> Answer:
        """Sends one request (signed with a fresh timestamp) and records it, secrets masked. The
        answer's body is read up to RESPONSE_BODY_LIMIT bytes and no further."""
        client, http_request = self._prepare(request)

        def error_text(exc: BaseException) -> str:
            if isinstance(exc, httpx.TimeoutException):
                return f"{request.method} {request.url}: no answer within {self.timeout:g} s ({type(exc).__name__})"
            return f"{request.method} {request.url}: {type(exc).__name__}: {exc}"

        try:
            return await send_recorded(
                client,
                http_request,
                recorder,
                limit=RESPONSE_BODY_LIMIT,
                # Every header derived from a secret is masked, whatever its name (custom auth headers too).
                secret_headers=[*self.auth_headers, "webhook-signature"],
                error_text=error_text,
            )
        except httpx.TransportError as exc:
            raise RetryableError(error_text(exc)) from exc

    @staticmethod
    def _raise_for_status(request: _Request, response: Answer, *, deleting: bool) -> None:
        """Maps the answer to the connector exceptions (rules in docs/http-sync.md, "Outcomes")."""
        status = response.status_code
        if 200 <= status < 300:
            return
        if deleting and status in (404, 410):
            return  # already gone: the destination holds the wanted state
        where = f"{request.method} {request.url} answered {status}"
        excerpt = response.text[:EXCERPT_CHARS].strip()
        detail = f"{where}: {excerpt}" if excerpt else where
        error = status_error(
            status,
            detail,
            retry_after=response.headers.get("Retry-After"),
            retryable_statuses=RETRYABLE_STATUSES,
        )
        if not isinstance(error, PermanentError):
            raise error
        if status == 410:
            raise PermanentError(f"{where}: the receiver says this endpoint is gone", status_code=status)
        if 300 <= status < 400:
            location = response.headers.get("Location", "?")
            raise PermanentError(
                f"{where}: redirects are not followed, update the url (to {location})", status_code=status
            )
        raise error

    # -- test connection ----------------------------------------------------------------------------

    async def test_connection(self, recorder: CallRecorder) -> DeliveryOutcome:
        """absync.v1: a signed ``POST {url}`` of ``{"type":"absync.ping"}``; lucca.legacy: ``OPTIONS
        {url}`` with the credentials (a Lucca receiver knows no ping and would store any POST).
        2xx or 405 (the URL exists, the method is not routed) means reachable."""
        if self._batches is not None:  # batch mode: an empty batch proves the receiver speaks it
            return await self._batches.ping(recorder)
        ping_id = f"ping_{uuid.uuid4().hex}"
        if self.format == "lucca.legacy":
            request = _Request("OPTIONS", self.url, ping_id, None, {"X-Version": self.x_version})
        else:
            body = {
                "type": "absync.ping",
                "tenant": self.destination.tenant,
                "destination_id": self.destination.id,
            }
            request = _Request("POST", self.url, ping_id, to_json_bytes(body), {})
        response = await self._send(request, recorder)
        if response.status_code != 405:
            self._raise_for_status(request, response, deleting=False)
        return DeliveryOutcome(
            summary=f"{request.method} {self.url} answered {response.status_code}: reachable"
        )


def _counts(statuses: list[int]) -> str:
    """[200, 200, 201] -> '2x200, 1x201'."""
    return ", ".join(f"{statuses.count(s)}x{s}" for s in sorted(set(statuses)))
