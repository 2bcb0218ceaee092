"""The connector contracts: a lifecycle every connector shares, and two ways of being fed.

Lifecycle (:class:`BaseConnector`), the same for every kind; a connector is built once per
destination (and rebuilt when the destination's revision changes):

1. ``__init__(destination, secrets, options)``: stores its arguments, validates settings, **no I/O**
   (no connection, no thread, no file): building a connector for a bad destination fails at once with
   a :class:`connectors.exceptions.ConfigurationError` and costs nothing else.
2. ``await setup()``: opens HTTP clients, token caches... Called once before the first use.
3. the kind's work: :meth:`Connector.deliver` (per-change) or :meth:`DigestConnector.publish` (digest);
4. ``await test_connection(recorder)``: a harmless call that proves URL and credentials work.
5. ``await close()``: releases everything; the connector is not used again.

Two contracts, chosen by the kind's declaration (:mod:`connectors.declaration`, ``digest``):

- :class:`Connector`, **per-change**: the delivery worker calls ``deliver(delivery, recorder)`` once
  per absence change the fan-out routed to the destination (see its docstring for the guarantees);
- :class:`DigestConnector`, **digest**: the fan-out routes no change to it; a scheduler of its own
  (Slack: :mod:`processors.slack_scheduler`) calls ``publish`` with the digest of a day.

:mod:`connectors.registry` hands out one or the other (``delivery_connector_class``,
``digest_connector_class``), typed: no caller casts.

Execution: a connector never blocks the event loop. A blocking client library (exchangelib, msal,
google-api-python-client) runs through :meth:`BaseConnector.run_blocking`, on threads that belong to
this destination (:class:`connectors.executor.BlockingExecutor`, ``blocking_threads`` of them), never
on asyncio's default executor. One attempt (``deliver``) has a total deadline,
:attr:`BaseConnector.attempt_deadline`, enforced by the delivery worker: past it the attempt is
cancelled and ends as a retryable timeout, whatever the destination is doing (a slow drip included).

Every HTTP call is recorded in the attempt's :class:`CallRecorder` (secrets masked, bodies cut);
:mod:`connectors.wire` has the helpers that do it, parse Retry-After and map a status to an error.
"""

from __future__ import annotations

import abc
import datetime as dt
import json
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import httpx
from pydantic import SecretStr

from connectors.declaration import KindDeclaration
from connectors.egress import DEFAULT_POLICY, EgressPolicy
from connectors.executor import BlockingExecutor
from connectors.redact import Redactor, guard_methods, header_forms, secret_forms
from schemas.delivery import RESPONSE_BODY_LIMIT, Delivery
from schemas.destination import Destination
from streams.logging import MASK, is_secret_name

if TYPE_CHECKING:
    from streams.settings import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class ConnectorOptions:
    """Process-wide options every connector gets (from settings)."""

    timeout: float = 10.0
    """Seconds one call may wait for the destination (connect, each read)."""
    user_agent: str = "absync/0.1"
    egress: EgressPolicy = DEFAULT_POLICY
    """Which addresses the connector may connect to (production's policy unless told otherwise)."""
    attempt_deadline: float | None = None
    """Seconds one whole attempt may take; None: ``ATTEMPT_DEADLINE_CALLS`` call timeouts."""
    http_transport: str = "aiohttp"
    """What carries the HTTP connector's httpx requests: ``httpx`` (httpcore) or ``aiohttp``."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectorOptions:
        """Timeout, attempt deadline and egress policy from a :class:`streams.settings.Settings`."""
        return cls(
            timeout=settings.connector_timeout,
            egress=EgressPolicy.from_settings(settings),
            attempt_deadline=settings.attempt_deadline or None,
            http_transport=settings.http_transport,
        )


ATTEMPT_DEADLINE_CALLS = 3
"""Without a setting, an attempt may last three call timeouts (a token, a look-up, a write)."""
DEFAULT_BLOCKING_THREADS = 4


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


async def read_body(response: httpx.Response, limit: int = RESPONSE_BODY_LIMIT) -> bytes:
    """At most ``limit`` bytes of a *streamed* response's body, decoded (gzip/deflate), and not one
    raw chunk more than needed: a huge (or decompression-bomb) answer costs ``limit``, not its size.
    The caller closes the response (its connection is then dropped, not reused, if unread data remains).
    """
    encoding = response.headers.get("content-encoding", "").strip().lower()
    wbits = {"gzip": 47, "x-gzip": 47, "deflate": 15}.get(encoding)
    inflater = zlib.decompressobj(wbits) if wbits is not None else None
    out = bytearray()
    async for chunk in response.aiter_raw():
        if inflater is not None:
            try:
                chunk = inflater.decompress(chunk, limit + 1 - len(out))
            except zlib.error:
                break
        out += chunk
        if len(out) > limit:
            break
    return bytes(out[: limit + 1])


def cut(text: str | None, limit: int = RESPONSE_BODY_LIMIT) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"... [cut, {len(text)} chars in all]"


class CallRecorder:
    """Collects the calls of one attempt, for the attempt log. Never stores a secret."""

    def __init__(self, secrets: Mapping[str, SecretStr] | None = None) -> None:
        self.calls: list[RecordedCall] = []
        self._redactor = Redactor(secret_forms(secrets or {}))

    def scrub(self, text: str) -> str:
        """``text`` with every form of the secrets masked, and every secret header value sent so far
        (see :mod:`connectors.redact`)."""
        return self._redactor.scrub(text)

    def learn(self, value: str) -> None:
        """Masks ``value`` (a token obtained at run time...) from now on."""
        self._redactor.add(header_forms(value))

    def start(
        self, method: str, url: str, headers: Mapping[str, str], body: str | bytes | None
    ) -> RecordedCall:
        if isinstance(body, bytes):
            body = body.decode("utf-8", errors="replace")
        masked = mask_headers(headers)
        for name, value in headers.items():
            if masked.get(name) == MASK and value != MASK and "signature" not in name.lower():
                # What was sent as a credential is masked in the answer too (a signature is no
                # credential, and a new one per request: not learned).
                self.learn(value)
        call = RecordedCall(
            method=method,
            url=self.scrub(url),
            request_headers=masked,
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


class BaseConnector(abc.ABC):
    """The lifecycle every connector shares (module docstring). A concrete connector subclasses
    :class:`Connector` or :class:`DigestConnector` and sets ``declaration``; ``kind`` follows from it."""

    kind: ClassVar[str]
    declaration: ClassVar[KindDeclaration]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every connector's ``setup``/``deliver``/``test_connection``/``publish`` lets no error out
        with a secret in it, and answers a refused address with one uniform error (connectors.redact)."""
        super().__init_subclass__(**kwargs)
        declaration = cls.__dict__.get("declaration")
        if declaration is not None:
            cls.kind = declaration.kind
        guard_methods(cls)

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
        self.redactor = Redactor(secret_forms(self.secrets))
        """Masks this destination's secrets (and tokens the connector adds) in any text it produces."""
        self.call_timeout: float = self.options.timeout
        """One call's timeout; a connector with a per-destination timeout sets it."""
        self.blocking_threads = DEFAULT_BLOCKING_THREADS
        """Threads of this destination for blocking client libraries (set before the first call)."""
        self._executor: BlockingExecutor | None = None

    @property
    def attempt_deadline(self) -> float:
        """Seconds one attempt may take in all; never shorter than one call's timeout."""
        explicit = self.options.attempt_deadline
        if explicit:
            return max(explicit, self.call_timeout)
        return ATTEMPT_DEADLINE_CALLS * self.call_timeout

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on this destination's own threads (see :mod:`connectors.executor`)."""
        if self._executor is None:
            self._executor = BlockingExecutor(f"{self.kind}:{self.destination.id}", self.blocking_threads)
        return await self._executor.run(fn, *args)

    def release_threads(self) -> None:
        """After :meth:`close`: this destination's idle threads end, queued calls fail (retryable)."""
        if self._executor is not None:
            self._executor.close()

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Opens clients. Called once, before the first use; the only place (with the calls after
        it) where a connector may do I/O."""

    async def test_connection(self, recorder: CallRecorder) -> DeliveryOutcome:
        """A harmless call that proves the configuration works (no effect a user sees), recorded in
        ``recorder``; raises a :mod:`connectors.exceptions` error. Default: nothing to test."""
        return DeliveryOutcome(summary="nothing to test for this kind")

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Releases clients. Called once; safe after a failed ``setup``."""

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


class Connector(BaseConnector):
    """The **per-change** contract: one :class:`schemas.delivery.Delivery` at a time.

    Guarantees a connector gives (and its tests prove against its fake):

    - ``deliver`` makes the destination hold ``delivery.event``'s state: ``UPSERT`` creates or
      updates, ``DELETE`` removes (an already-absent item is a success);
    - it is idempotent: the same delivery may come twice (after a crash, a lost answer) and has one
      effect;
    - it returns a :class:`DeliveryOutcome` on success and raises a :mod:`connectors.exceptions`
      error on failure (the worker decides retry or Error from the type alone);
    - it records every HTTP call it makes in ``recorder``, secrets masked.

    What the worker guarantees in return: ``delivery.event`` is the *latest* state of the absence for
    this destination (superseded deliveries are dropped before the call); one key's deliveries never
    run concurrently; an attempt past :attr:`attempt_deadline` is cancelled.
    """

    @abc.abstractmethod
    async def deliver(self, delivery: Delivery, recorder: CallRecorder) -> DeliveryOutcome:
        """Makes the destination hold ``delivery.event``'s state (or remove it)."""


@dataclass(frozen=True)
class Published:
    """Where a digest is, and what was done to put it there ("posted" or "updated")."""

    ts: str
    action: str


class DigestConnector(BaseConnector):
    """The **digest** contract: one text per destination and day, kept up to date in place.

    The fan-out routes no absence change to a digest kind (its declaration says ``digest=True``);
    its scheduler renders the day's text and calls :meth:`publish`, on the scheduler's own thread
    (``publish`` is synchronous and may block for one call timeout per call it makes).

    Guarantees a connector gives:

    - after ``publish`` returns, the destination shows ``text`` as the digest of ``day``, exactly
      once: a known digest (``ts``) is updated in place; an unknown one is first looked for (a crash
      may have lost its ``ts``) and posted only when absent;
    - it returns where the digest is (:class:`Published`) and raises a :mod:`connectors.exceptions`
      error on failure (the scheduler follows the digest as a delivery: retry ladder, status facts);
    - it records every call in ``recorder``, secrets masked.
    """

    channel: str
    """Where the digest goes (a change of it starts a new digest)."""

    @abc.abstractmethod
    def publish(
        self, day: str, text: str, ts: str | None, day_starts_at: float, recorder: CallRecorder
    ) -> Published:
        """Makes the destination hold ``text`` as the digest of ``day`` (ISO date): updates it, or
        posts it once. ``ts`` is the digest's id when the caller knows it; ``day_starts_at`` (epoch
        seconds, the local midnight) bounds the search for a digest the caller does not know."""
