"""httpx on aiohttp (the ``httpx-aiohttp`` transport), under the egress policy: :func:`aiohttp_client`.

httpx stays the API (requests, responses, exceptions, timeouts); aiohttp carries the bytes. httpcore's
pool costs CPU per request that grows with the pool (``has_expired`` polls every pooled socket, anyio
wraps every read and write); aiohttp's protocol-based pool does not (docs/performance.md, issue 15).

What holds, as with :func:`connectors.egress_clients.guarded_client`:

- **the egress policy** (:mod:`connectors.egress`): a name is resolved by :class:`PolicyResolver`, which
  returns only the addresses the policy resolved and permitted, and aiohttp connects to those (the
  name is used for TLS only: SNI and the certificate check); no DNS cache, so every new connection is
  checked. An IP literal never reaches a resolver in aiohttp: :class:`GuardedAiohttpTransport` checks
  it before each request (numeric forms such as ``2130706433`` or ``127.1`` are read by the policy
  and sent to the address they mean). A refusal is :class:`connectors.egress.AddressNotAllowed`,
  unchanged. No proxy from the environment, no cookie jar of aiohttp's own (httpx keeps its own);
- **no resend by the library**: aiohttp would send a PUT or DELETE again by itself when a
  connection drops, also a request that may have arrived; that is off, as with httpx, so one
  recorded call is one request and a failure goes to the retry ladder;
- **the same errors**: aiohttp's exceptions become the httpx exceptions httpcore raises in the same
  case (``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``ReadError``, ``RemoteProtocolError``),
  so recorded errors and timeout messages read the same; the timeouts are httpx's (connect, read;
  pool = waiting for a connection and connecting);
- **bounded answers**: the body is capped at ``max_body`` (a ``ReadError`` past it).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from httpx_aiohttp import AiohttpTransport

from connectors.egress import EgressPolicy, parse_address
from connectors.egress_clients import (
    DEFAULT_LIMITS,
    DEFAULT_MAX_RESPONSE_BYTES,
    _CappedStream,
    guarded_client,
    ssl_context,
)
from connectors.executor import BlockingExecutor

DNS_THREADS = 2
"""Name look-ups of one client at once (new connections only; a pool reuses its connections)."""


class PolicyResolver(AbstractResolver):
    """aiohttp's resolver: the policy's checked addresses of a name, or a refusal. DNS runs on
    ``DNS_THREADS`` threads of this client's own (:class:`connectors.executor.BlockingExecutor`), never
    on asyncio's default executor: a name server that hangs holds this destination's lookups only, and
    an abandoned lookup (the connect timeout) is bounded there."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy
        self.threads = BlockingExecutor("egress-dns", DNS_THREADS)

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        addresses = await self.threads.run(self.policy.resolve, host, port)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        self.threads.close()


def _httpx_error(exc: BaseException) -> httpx.TransportError | None:
    """The httpx exception httpcore raises where aiohttp raised ``exc`` (None: not a transport error)."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, aiohttp.ServerTimeoutError):  # SocketTimeoutError: a read took too long
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, unreachable, DNS, TLS handshake
        return httpx.ConnectError(message)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError("Server disconnected without sending a response.")
    if isinstance(exc, aiohttp.ClientResponseError):  # an answer aiohttp could not parse
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(message)
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientOSError | aiohttp.ClientConnectionError):
        return httpx.ReadError(message)
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(message)
    return None


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    """aiohttp's errors (as raised, or as httpx-aiohttp mapped them) as httpcore's would be."""
    try:
        yield
    except httpx.TransportError as exc:  # httpx-aiohttp's own mapping: remapped from the cause
        mapped = _httpx_error(exc.__cause__) if exc.__cause__ is not None else None
        if mapped is None:
            raise
        raise mapped from exc.__cause__
    except (TimeoutError, aiohttp.ClientError) as exc:
        mapped = _httpx_error(exc)
        if mapped is None:
            raise
        raise mapped from exc


class _AiohttpStream(httpx.AsyncByteStream):
    """The answer's body, aiohttp's errors as httpx's."""

    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for chunk in self._inner:
                yield chunk

    async def aclose(self) -> None:
        with _as_httpx_errors():
            await self._inner.aclose()


class GuardedAiohttpTransport(AiohttpTransport):
    """httpx-aiohttp's transport on a connector bound to ``policy`` (see the module docstring)."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits = DEFAULT_LIMITS,
        max_body: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        context = ssl_context(verify)
        super().__init__(verify=context, limits=limits, trust_env=False, client=self._session)
        self.policy = policy
        self.max_body = max_body
        self._resolver = PolicyResolver(policy)
        self._literals: dict[tuple[str, int], str] = {}
        """IP literals checked already (the answer of the policy for a literal never changes)."""

    def _session(self) -> aiohttp.ClientSession:
        """Built on first use, inside the event loop (aiohttp wants a running loop)."""
        connector = aiohttp.TCPConnector(
            limit=self.limits.max_connections or 0,
            limit_per_host=0,
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
            resolver=self._resolver,
            use_dns_cache=False,  # every new connection is checked by the policy
        )
        session = aiohttp.ClientSession(
            connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
        )
        session._retry_connection = False  # no resend by aiohttp itself (see the module docstring)
        return session

    def _checked_url(self, url: httpx.URL) -> httpx.URL:
        """``url`` with an IP literal checked by the policy (a numeric form rewritten to its address);
        a name is left to :class:`PolicyResolver`. Raises ``AddressNotAllowed``."""
        host = url.host
        if not aiohttp.helpers.is_ip_address(host):
            return url
        port = url.port or (443 if url.scheme == "https" else 80)
        address = self._literals.get((host, port))
        if address is None:
            address = self.policy.resolve(host, port)[0]
            self._literals[(host, port)] = address
        literal = parse_address(host)
        return url if literal is not None and str(literal) == address else url.copy_with(host=address)

    async def aclose(self) -> None:
        await super().aclose()
        await self._resolver.close()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        checked = self._checked_url(request.url)
        if checked is not request.url:
            request.url = checked  # the Host header keeps the URL's own spelling
        with _as_httpx_errors():
            response = await super().handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _CappedStream(_AiohttpStream(response.stream), self.max_body)
        return response


def aiohttp_client(policy: EgressPolicy, **kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` on aiohttp whose every connection obeys ``policy``: the arguments and
    guarantees of :func:`connectors.egress_clients.guarded_client`, on :class:`GuardedAiohttpTransport`."""
    return guarded_client(policy, transport_type=GuardedAiohttpTransport, **kwargs)


def webhook_client(transport: str, policy: EgressPolicy, **kwargs: Any) -> httpx.AsyncClient:
    """The HTTP connector's client: on aiohttp (:func:`aiohttp_client`) or, with ``transport`` "httpx",
    on httpcore (:func:`connectors.egress_clients.guarded_client`); either keeps no cookies (a
    receiver's ``Set-Cookie`` is not sent back: :class:`connectors.egress_clients.StatelessClient`)."""
    build = aiohttp_client if transport == "aiohttp" else guarded_client
    return build(policy, keep_cookies=False, **kwargs)


__all__ = ["GuardedAiohttpTransport", "PolicyResolver", "aiohttp_client", "webhook_client"]
