"""HTTP helpers every connector shares: written once, used by all of them.

- :func:`parse_retry_after`: a ``Retry-After`` header as seconds from now. Both RFC 9110 forms
  (delta-seconds, HTTP-date) are read; whatever the destination sends, the answer is ``None`` or a
  finite number in ``[0, MAX_RETRY_AFTER]`` (negative, huge, NaN, garbage or a date in the past never
  pass through: a hostile destination cannot park a delivery for years or overflow a due time).
- :func:`status_error`: an HTTP status (and its Retry-After) as the :mod:`connectors.exceptions`
  error the delivery worker acts on, with the rules every connector had written on its own.
- :func:`record` / :func:`arecord`: one call recorded in the attempt log around any client library
  (secrets masked, bodies cut by :class:`connectors.base.CallRecorder`); an exception is recorded as
  the call's error and raised again unchanged.
- :func:`send_recorded`: one ``httpx`` request, recorded, its answer body read up to a limit.
- :class:`BatchSession`: a connector's guarded ``httpx`` client and, in batch mode (setting
  ``batch_requests``), its :class:`connectors.batching.MicroBatcher`, set up and closed together.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import math
import re
import ssl
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from connectors.base import CallRecorder, ConnectorOptions, DeliveryOutcome, read_body
from connectors.batching import MicroBatcher, SendBatch
from connectors.egress_clients import guarded_client
from connectors.exceptions import (
    BackpressureError,
    ConfigurationError,
    ConnectorError,
    PermanentError,
    RetryableError,
)
from schemas.delivery import Delivery
from streams.logging import MASK

T = TypeVar("T")

MAX_RETRY_AFTER = 86_400.0
"""The longest wait a destination may ask for (one day): a larger value is read as this one."""
MAX_HEADER_CHARS = 200
"""A longer Retry-After is garbage (an HTTP-date has 29 characters): not parsed at all."""
_DELTA_SECONDS = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,9})?")
"""RFC 9110 delta-seconds (ASCII digits); a decimal fraction, which some services send, is read too."""
BACKPRESSURE_STATUSES = (429, 503)
"""Statuses that are rate limits when they carry a Retry-After (429 always is one)."""
NOT_READ = "... [cut: the rest of the answer was not read]"

Shown = tuple[int | None, Mapping[str, str] | None, str | bytes | None]
"""What the attempt log shows of an answer: status, headers, body (already masked where needed)."""


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from ``now``, in ``[0, MAX_RETRY_AFTER]``; None when absent or not
    one of its two forms (negative numbers, ``nan``, ``inf``, text, over-long values are None).

    A date in the past is 0 (retry at once, no earlier than the ladder allows); a date without a zone
    is read as UTC (HTTP-dates are GMT).
    """
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > MAX_HEADER_CHARS:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        try:
            seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
        except OverflowError:
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def status_error(
    status: int,
    detail: str,
    *,
    retry_after: str | None = None,
    throttled: bool = False,
    backpressure_statuses: Collection[int] = BACKPRESSURE_STATUSES,
    always_backpressure: Collection[int] = (429,),
    retryable_statuses: Collection[int] = (),
) -> ConnectorError:
    """The connector error for a failed answer of status ``status`` (never for a 2xx: the caller
    decides what success is). In order:

    1. :class:`BackpressureError` (``retry_after`` parsed by :func:`parse_retry_after`) when the
       answer says "slow down": ``throttled`` (a body such as Google's ``rateLimitExceeded``), a status
       of ``always_backpressure``, or a status of ``backpressure_statuses`` with a usable Retry-After;
    2. :class:`RetryableError` for a 5xx or a status of ``retryable_statuses``;
    3. :class:`PermanentError` otherwise. A connector refines a PermanentError (no mailbox, refused
       credentials...) and keeps the first two as they are.
    """
    seconds = parse_retry_after(retry_after)
    if (
        throttled
        or status in always_backpressure
        or (status in backpressure_statuses and seconds is not None)
    ):
        return BackpressureError(detail, retry_after=seconds, status_code=status)
    if status >= 500 or status in retryable_statuses:
        return RetryableError(detail, status_code=status)
    return PermanentError(detail, status_code=status)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def record(
    recorder: CallRecorder,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: str | bytes | None,
    send: Callable[[], T],
    shown: Callable[[T], Shown],
    *,
    errors: tuple[type[BaseException], ...] = (Exception,),
    error_text: Callable[[BaseException], str] = _error_text,
) -> T:
    """``send()``, recorded as one call: the request as given (headers masked by the recorder), the
    answer as ``shown(result)`` says. An exception of ``send`` among ``errors`` is recorded
    (``error_text``); any exception is raised again unchanged (one not recorded leaves the call open:
    ``CallRecorder.fail_open_calls`` closes it with the attempt's error)."""
    call = recorder.start(method, url, headers, body)
    try:
        result = send()
    except errors as exc:
        recorder.finish(call, error=error_text(exc))
        raise
    status, answer_headers, answer_body = shown(result)
    recorder.finish(call, status, answer_headers, answer_body)
    return result


async def arecord(
    recorder: CallRecorder,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: str | bytes | None,
    send: Callable[[], Awaitable[T]],
    shown: Callable[[T], Shown],
    *,
    errors: tuple[type[BaseException], ...] = (Exception,),
    error_text: Callable[[BaseException], str] = _error_text,
) -> T:
    """:func:`record` for a coroutine (a cancelled call stays open: ``fail_open_calls`` closes it)."""
    call = recorder.start(method, url, headers, body)
    try:
        result = await send()
    except errors as exc:
        recorder.finish(call, error=error_text(exc))
        raise
    status, answer_headers, answer_body = shown(result)
    recorder.finish(call, status, answer_headers, answer_body)
    return result


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer read by :func:`send_recorded`: status, headers, and the body read (``truncated``
    when the rest was not read)."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    truncated: bool = False

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def json(self) -> Any:
        """The body as JSON (``ValueError`` when it is not, or was cut)."""
        return json.loads(self.content)


async def send_recorded(
    client: httpx.AsyncClient,
    request: httpx.Request,
    recorder: CallRecorder,
    *,
    limit: int | None,
    shown_request: str | bytes | None = None,
    secret_headers: Collection[str] = (),
    mask_answer: Callable[[Answer], str | None] | None = None,
    errors: tuple[type[BaseException], ...] = (httpx.TransportError,),
    error_text: Callable[[BaseException], str] = _error_text,
) -> Answer:
    """Sends ``request`` with ``client`` and records it: the request headers masked (and those named
    in ``secret_headers``, whatever their name), its body (or ``shown_request``) scrubbed of secrets,
    the answer's first ``limit`` bytes (a cut body says so).

    Never reads more than ``limit`` bytes of the answer (the connection is dropped, not reused, when
    more remains); ``limit=None`` reads it whole, as far as the client's own cap allows
    (:func:`connectors.egress_clients.guarded_client`: a ``ReadError`` past it). ``mask_answer(answer)`` may replace the recorded body (a token: masked). Any
    exception (``httpx.TransportError`` and what the client lets out) is recorded with
    ``error_text``, then raised unchanged.
    """
    try:
        body: bytes | str = request.content
    except httpx.RequestNotRead:
        body = b"<streamed body>"
    call = recorder.start(
        request.method,
        str(request.url),
        request.headers,
        shown_request if shown_request is not None else body,
    )
    hidden = {name.lower() for name in secret_headers}
    for name in call.request_headers:
        if name.lower() in hidden:
            call.request_headers[name] = MASK
    try:
        response = await client.send(request, stream=True)
        try:
            content = await read_body(response, limit) if limit is not None else await response.aread()
        finally:
            await response.aclose()
    except errors as exc:
        recorder.finish(call, error=error_text(exc))
        raise
    truncated = limit is not None and len(content) > limit
    answer = Answer(response.status_code, response.headers, content[:limit], truncated)
    text: str | None = answer.text
    if truncated and limit is not None:
        text = content[: max(0, limit - len(NOT_READ))].decode("utf-8", errors="replace") + NOT_READ
    if mask_answer is not None:
        text = mask_answer(answer) or text
    recorder.finish(call, answer.status_code, answer.headers, text)
    return answer


class BatchSession:
    """A connector's ``httpx`` client (:func:`connectors.egress_clients.guarded_client`: the egress
    policy holds for it) and, in batch mode, the :class:`connectors.batching.MicroBatcher` its
    ``deliver`` calls go through.

    ``batch_requests`` (the setting) must be true or false: anything else is a ConfigurationError
    when the connector is built. :meth:`close` closes the batcher first (its waiting deliveries fail
    retryably), then the client; closing twice, or before :meth:`start`, is harmless.
    """

    def __init__(self, owner: str, batch_requests: object) -> None:
        if not isinstance(batch_requests, bool):
            raise ConfigurationError("setting 'batch_requests' must be true or false")
        self.owner = owner
        """The connector's class name, for the error of a client used before setup."""
        self.batch_requests = batch_requests
        self.client: httpx.AsyncClient | None = None
        self.batcher: MicroBatcher | None = None

    def start(
        self,
        options: ConnectorOptions,
        send: SendBatch,
        *,
        max_items: int,
        deadline: float,
        name: str,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """Builds the client (``options``' egress policy, timeout and User-Agent) and, in batch mode,
        the batcher that flushes into ``send``. Called from the connector's (async) ``setup``."""
        self.client = guarded_client(
            options.egress,
            timeout=httpx.Timeout(options.timeout),
            verify=verify,
            headers={"User-Agent": options.user_agent},
        )
        if self.batch_requests:
            self.batcher = MicroBatcher(send, max_items=max_items, deadline=deadline, name=name)

    async def deliver(
        self,
        delivery: Delivery,
        recorder: CallRecorder,
        deliver_one: Callable[[Delivery, CallRecorder], Awaitable[DeliveryOutcome]],
    ) -> DeliveryOutcome:
        """``delivery`` through the batcher in batch mode, else ``deliver_one`` on its own."""
        if self.batcher is not None:
            return await self.batcher.deliver(delivery, recorder)
        return await deliver_one(delivery, recorder)

    def http_client(self) -> httpx.AsyncClient:
        """The client; a RuntimeError before :meth:`start` (the connector's setup not awaited)."""
        if self.client is None:
            raise RuntimeError(f"{self.owner}.setup() was not awaited")
        return self.client

    async def close(self) -> None:
        if self.batcher is not None:  # first: its waiting deliveries fail retryably
            await self.batcher.close()
        if self.client is not None:
            await self.client.aclose()
            self.client = None
