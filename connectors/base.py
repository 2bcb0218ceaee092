"""The connector contract.

A connector is built once per destination (and rebuilt when the destination's revision changes):

1. ``__init__(destination, secrets, options)``: stores its arguments, validates settings, **no I/O**.
2. ``await setup()``: opens HTTP clients, token caches... Called once before the first delivery.
3. ``await deliver(delivery, recorder)``: makes the destination hold the delivery's state:
   ``UPSERT`` creates or updates, ``DELETE`` removes (an already-absent item is a success). It must be
   idempotent: the same delivery may come twice (after a crash) and must have one effect. It records
   every HTTP call it makes in ``recorder`` (secrets masked), returns a :class:`DeliveryOutcome` on
   success and raises a :mod:`connectors.exceptions` error on failure.
4. ``await test_connection(recorder)``: a harmless call that proves URL and credentials work.
5. ``await close()``.

``delivery.event`` always carries the *latest* state of the absence for this destination (the
processor drops superseded deliveries before calling the connector).
"""

from __future__ import annotations

import abc
import datetime as dt
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
from pydantic import SecretStr

from schemas.delivery import RESPONSE_BODY_LIMIT, Delivery
from schemas.destination import Destination
from streams.logging import MASK, is_secret_name


@dataclass(frozen=True)
class ConnectorOptions:
    """Process-wide options every connector gets (from settings)."""

    timeout: float = 10.0
    user_agent: str = "absync/0.1"


@dataclass
class DeliveryOutcome:
    """What a successful delivery reports (shown to operators)."""

    summary: str = "delivered"
    external_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecordedCall:
    method: str
    url: str
    request_headers: dict[str, str]
    request_body: str
    started_at: dt.datetime
    duration_ms: float = 0.0
    response_status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: str | None = None
    error: str | None = None


def mask_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers with secret values (Authorization, tokens, signatures, cookies) masked."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if is_secret_name(lowered) or lowered in ("cookie", "set-cookie", "x-api-key", "proxy-authorization"):
            out[name] = MASK
        else:
            out[name] = value
    return out


def cut(text: str | None, limit: int = RESPONSE_BODY_LIMIT) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"... [cut, {len(text)} chars in all]"


class CallRecorder:
    """Collects the calls of one attempt, for the attempt log. Never stores a secret."""

    def __init__(self, secrets: Mapping[str, SecretStr] | None = None) -> None:
        self.calls: list[RecordedCall] = []
        self._secret_values = [s.get_secret_value() for s in (secrets or {}).values() if s.get_secret_value()]

    def scrub(self, text: str) -> str:
        for value in self._secret_values:
            if len(value) >= 4:
                text = text.replace(value, MASK)
        return text

    def start(
        self, method: str, url: str, headers: Mapping[str, str], body: str | bytes | None
    ) -> RecordedCall:
        if isinstance(body, bytes):
            body = body.decode("utf-8", errors="replace")
        call = RecordedCall(
            method=method,
            url=self.scrub(url),
            request_headers=mask_headers(headers),
            request_body=self.scrub(body or ""),
            started_at=dt.datetime.now(dt.UTC),
        )
        call._t0 = time.perf_counter()  # type: ignore[attr-defined]
        self.calls.append(call)
        return call

    def finish(
        self,
        call: RecordedCall,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        body: str | bytes | None = None,
        error: str | None = None,
    ) -> None:
        if isinstance(body, bytes):
            body = body.decode("utf-8", errors="replace")
        call.duration_ms = (time.perf_counter() - call._t0) * 1000  # type: ignore[attr-defined]
        call.response_status = status
        call.response_headers = mask_headers(headers or {})
        call.response_body = cut(self.scrub(body)) if body is not None else None
        call.error = self.scrub(error) if error else None

    def httpx_hooks(self) -> dict[str, list[Any]]:
        """Event hooks that record every request an ``httpx.AsyncClient`` makes."""

        async def on_request(request: httpx.Request) -> None:
            try:
                body: bytes = request.content
            except httpx.RequestNotRead:
                body = b"<streamed body>"
            request.extensions["absync_call"] = self.start(
                request.method, str(request.url), request.headers, body
            )

        async def on_response(response: httpx.Response) -> None:
            call = response.request.extensions.get("absync_call")
            if isinstance(call, RecordedCall):
                await response.aread()
                self.finish(call, response.status_code, response.headers, response.text)

        return {"request": [on_request], "response": [on_response]}

    def fail_open_calls(self, error: str) -> None:
        """Marks calls that never got a response (timeout, refused) with the error."""
        for call in self.calls:
            if call.response_status is None and call.error is None:
                self.finish(call, error=error)


def pretty_json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


class Connector(abc.ABC):
    """Base class of every connector. Subclasses set ``kind`` and implement ``deliver``."""

    kind: ClassVar[str]

    def __init__(
        self,
        destination: Destination,
        secrets: Mapping[str, SecretStr],
        options: ConnectorOptions | None = None,
    ) -> None:
        self.destination = destination
        self.secrets = dict(secrets)
        self.options = options or ConnectorOptions()
        self.settings: dict[str, Any] = dict(destination.settings)

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Opens clients. Called once, before the first delivery."""

    @abc.abstractmethod
    async def deliver(self, delivery: Delivery, recorder: CallRecorder) -> DeliveryOutcome:
        """Makes the destination hold ``delivery.event``'s state (or remove it)."""

    async def test_connection(self, recorder: CallRecorder) -> DeliveryOutcome:
        """A harmless call that proves the configuration works. Default: nothing to test."""
        return DeliveryOutcome(summary="nothing to test for this kind")

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Releases clients."""

    def secret(self, name: str) -> str:
        from connectors.exceptions import ConfigurationError

        value = self.secrets.get(name)
        if value is None or not value.get_secret_value():
            raise ConfigurationError(f"destination {self.destination.id}: secret {name!r} is not set")
        return value.get_secret_value()

    def setting(self, name: str, default: Any = None, *, required: bool = False) -> Any:
        from connectors.exceptions import ConfigurationError

        value = self.settings.get(name, default)
        if required and (value is None or value == ""):
            raise ConfigurationError(f"destination {self.destination.id}: setting {name!r} is required")
        return value

    def count_setting(self, name: str, default: int) -> int:
        """A setting that must be a positive integer (a count: connections, ...)."""
        from connectors.exceptions import ConfigurationError

        value = self.setting(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigurationError(
                f"destination {self.destination.id}: {name} must be a positive integer, got {value!r}"
            )
        return value
