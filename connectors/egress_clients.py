"""The egress policy (:mod:`connectors.egress`) plugged into each HTTP client library the connectors
use, at the socket level: the library never resolves the destination's name itself, it gets a socket
to an address the policy resolved and checked (TLS still verifies the certificate against the name).

* httpx (HTTP, Graph, ADP): :func:`guarded_transport`, an ``AsyncHTTPTransport`` whose connection
  pool opens connections through :class:`GuardedBackend`; it also caps response bodies.
* requests / urllib3 (msal, exchangelib): :class:`GuardedAdapter`, whose connection classes open
  sockets through the policy; environment proxies are not used.
* httplib2 (Google): :func:`httplib2_connection_type`, the ``connection_type`` of every request.
* urllib / http.client (slack-sdk's ``WebClient``): :func:`urllib_opener`.

Proxies from the environment (``HTTPS_PROXY``...) are not used by connectors: the policy must see
the address it lets a connection go to.
"""

from __future__ import annotations

import contextvars
import http.client
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterable
from functools import lru_cache
from typing import Any, Protocol

import anyio
import httpcore
import httplib2
import httpx
import requests
import urllib3
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from connectors.egress import DEFAULT_POLICY, EgressPolicy, parse_address

DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
"""What an API response (Graph, ADP, Slack JSON...) may weigh before it is no longer read."""

DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
"""httpx's own default pool limits."""

_policy: contextvars.ContextVar[EgressPolicy | None] = contextvars.ContextVar("egress_policy", default=None)


def current_policy() -> EgressPolicy:
    """The policy bound to this context (see :class:`GuardedAdapter`), else production's."""
    return _policy.get() or DEFAULT_POLICY


def bind_policy(policy: EgressPolicy) -> contextvars.Token[EgressPolicy | None]:
    """Binds ``policy`` to the current context (threads started with a copy of it inherit it)."""
    return _policy.set(policy)


def unbind_policy(token: contextvars.Token[EgressPolicy | None]) -> None:
    _policy.reset(token)


def _seconds(timeout: object) -> float | None:
    """A library's timeout value as seconds; its "default" sentinels become the socket default."""
    if timeout is None or isinstance(timeout, int | float):
        return None if timeout is None else float(timeout)
    return socket.getdefaulttimeout()


# -- httpx -------------------------------------------------------------------------------------


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the policy resolved and permitted."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if parse_address(host) is not None:
            addresses = self.policy.resolve(host, port)  # a literal: checked without DNS, no thread
        else:
            try:
                with anyio.fail_after(timeout):
                    addresses = await anyio.to_thread.run_sync(
                        self.policy.resolve, host, port, abandon_on_cancel=True
                    )
            except TimeoutError:
                raise httpcore.ConnectTimeout(f"name resolution took over {timeout} s") from None
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not a destination")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def ssl_context(verify: ssl.SSLContext | bool) -> ssl.SSLContext:
    """``verify`` as the SSL context a guarded transport uses (a context is used as it is)."""
    return verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify)


class _CappedStream(httpx.AsyncByteStream):
    """A response stream that stops with a ``ReadError`` past ``limit`` bytes (nothing more is read)."""

    def __init__(self, inner: httpx.AsyncByteStream, limit: int) -> None:
        self._inner, self._limit = inner, limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                raise httpx.ReadError(f"response body over {self._limit} bytes: not read further")
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport on :class:`GuardedBackend`, with response bodies capped at ``max_body``."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits = DEFAULT_LIMITS,
        max_body: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        context = ssl_context(verify)
        super().__init__(verify=context, limits=limits, trust_env=False)
        # The pool httpx built, rebuilt on our network backend (httpx offers no argument for it).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )
        self.max_body = max_body

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _CappedStream(response.stream, self.max_body)
        return response


class _NoCookies(httpx.Cookies):
    """A cookie store that keeps nothing (nothing to extract, nothing sent back)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie(self, name: str, value: str, domain: str = "", path: str = "/") -> None:
        return None


class StatelessClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` that keeps no cookies: a webhook receiver's ``Set-Cookie`` is not
    sent back. httpx reads every answer into its cookie jar through urllib compatibility objects,
    ~5% of the delivery worker's CPU per request (docs/performance.md, issue 15)."""

    @property  # type: ignore[override]
    def cookies(self) -> httpx.Cookies:
        return _NoCookies()

    @cookies.setter
    def cookies(self, _cookies: object) -> None:
        return None


class GuardedTransportType(Protocol):
    """A transport class whose every connection obeys ``policy``, its answers capped at ``max_body``:
    :class:`GuardedTransport` (httpcore) or :class:`connectors.egress_aiohttp.GuardedAiohttpTransport`."""

    def __call__(
        self, policy: EgressPolicy, *, verify: ssl.SSLContext | bool, limits: httpx.Limits, max_body: int
    ) -> httpx.AsyncBaseTransport: ...


def guarded_client(
    policy: EgressPolicy,
    *,
    verify: ssl.SSLContext | bool = True,
    limits: httpx.Limits = DEFAULT_LIMITS,
    max_body: int = DEFAULT_MAX_RESPONSE_BYTES,
    keep_cookies: bool = True,
    transport_type: GuardedTransportType = GuardedTransport,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose every connection obeys ``policy`` (``kwargs`` go to the client),
    on ``transport_type``; no proxy or other setting from the environment; without ``keep_cookies``
    a :class:`StatelessClient`."""
    transport = transport_type(policy, verify=verify, limits=limits, max_body=max_body)
    client = httpx.AsyncClient if keep_cookies else StatelessClient
    return client(transport=transport, trust_env=False, **kwargs)


# -- requests / urllib3 ------------------------------------------------------------------------


def _open(connection: urllib3.connection.HTTPConnection) -> socket.socket:
    """urllib3's ``_new_conn``: the socket comes from the policy bound to the context."""
    try:
        return current_policy().create_connection(
            connection._dns_host,
            connection.port,
            _seconds(connection.timeout),
            connection.source_address,
            connection.socket_options,
        )
    except TimeoutError as exc:
        raise ConnectTimeoutError(connection, f"connection timed out ({connection.timeout})") from exc
    except OSError as exc:
        raise NewConnectionError(connection, f"Failed to establish a new connection: {exc}") from exc


class _GuardedHTTPConnection(urllib3.connection.HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _open(self)


class _GuardedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _open(self)


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection  # type: ignore[assignment]


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection  # type: ignore[assignment]


class GuardedAdapter(requests.adapters.HTTPAdapter):  # type: ignore[misc]
    """A requests adapter whose connections obey ``policy`` (or, when None, the policy bound to the
    calling context: exchangelib builds its adapters itself). Environment proxies are ignored."""

    def __init__(self, policy: EgressPolicy | None = None, **kwargs: Any) -> None:
        self.egress_policy = policy
        super().__init__(**kwargs)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}
        self.poolmanager.key_fn_by_scheme = dict(self.poolmanager.key_fn_by_scheme)

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        token = bind_policy(self.egress_policy) if self.egress_policy is not None else None
        try:
            response: requests.Response = super().send(
                request, stream=True, timeout=timeout, verify=verify, cert=cert, proxies=None
            )
            if not stream:  # read here, bounded, what requests would have read whole
                try:
                    body = response.raw.read(DEFAULT_MAX_RESPONSE_BYTES + 1, decode_content=True)
                except urllib3.exceptions.HTTPError as exc:
                    response.close()
                    raise requests.exceptions.ConnectionError(exc, request=request) from exc
                if len(body) > DEFAULT_MAX_RESPONSE_BYTES:
                    response.close()
                    raise requests.exceptions.ContentDecodingError(
                        f"response body over {DEFAULT_MAX_RESPONSE_BYTES} bytes: not read further",
                        request=request,
                    )
                response._content = body
                response._content_consumed = True
                response.raw.release_conn()  # the body is read: the connection goes back to the pool
            return response
        finally:
            if token is not None:
                unbind_policy(token)


# -- http.client (httplib2, urllib) ------------------------------------------------------------


class CappedResponse(http.client.HTTPResponse):
    """An ``http.client`` response whose whole-body read stops past DEFAULT_MAX_RESPONSE_BYTES."""

    def read(self, amt: int | None = None) -> bytes:
        if amt is not None:
            return super().read(amt)
        data = super().read(DEFAULT_MAX_RESPONSE_BYTES + 1)
        if len(data) > DEFAULT_MAX_RESPONSE_BYTES:
            self.close()
            raise http.client.HTTPException(
                f"response body over {DEFAULT_MAX_RESPONSE_BYTES} bytes: not read further"
            )
        return data


# -- httplib2 ----------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _httplib2_classes(policy: EgressPolicy) -> dict[str, type[http.client.HTTPConnection]]:
    class Plain(httplib2.HTTPConnectionWithTimeout):  # type: ignore[misc]
        response_class = CappedResponse

        def connect(self) -> None:
            self.sock = policy.create_connection(self.host, self.port, _seconds(self.timeout))

    class Secure(httplib2.HTTPSConnectionWithTimeout):  # type: ignore[misc]
        response_class = CappedResponse

        def connect(self) -> None:
            sock = policy.create_connection(self.host, self.port, _seconds(self.timeout))
            try:
                self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise

    return {"http": Plain, "https": Secure}


def httplib2_connection_type(policy: EgressPolicy, uri: str) -> type[http.client.HTTPConnection]:
    """The httplib2 ``connection_type`` for ``uri``: connects through ``policy``, proxies ignored."""
    scheme = uri.split(":", 1)[0].lower()
    return _httplib2_classes(policy)["https" if scheme == "https" else "http"]


# -- urllib / http.client ----------------------------------------------------------------------


def _bind(connection: http.client.HTTPConnection, policy: EgressPolicy) -> None:
    def create(address: tuple[str, int], timeout: object = None, source: Any = None) -> socket.socket:
        return policy.create_connection(address[0], address[1], _seconds(timeout), source)

    connection._create_connection = create  # type: ignore[attr-defined]


def urllib_opener(
    policy: EgressPolicy, context: ssl.SSLContext | None = None
) -> urllib.request.OpenerDirector:
    """A urllib opener whose connections obey ``policy``; no proxy, no ``file:``/``ftp:``."""

    class Plain(http.client.HTTPConnection):
        response_class = CappedResponse

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            _bind(self, policy)

    class Secure(http.client.HTTPSConnection):
        response_class = CappedResponse

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            _bind(self, policy)

    class PlainHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Plain, req)

    class SecureHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Secure, req, context=context)

    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.UnknownHandler(),
        PlainHandler(),
        SecureHandler(context=context),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "GuardedAdapter",
    "GuardedBackend",
    "GuardedTransport",
    "bind_policy",
    "current_policy",
    "guarded_client",
    "httplib2_connection_type",
    "unbind_policy",
    "urllib_opener",
]
