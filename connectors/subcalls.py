"""Sub-call rounds: the deliveries of one batch each run their own sequential code, and the calls they
make at the same step go out together, in one batch request (Graph ``$batch``, Google batch).

A calendar delivery makes several calls, in order: look its event up, then create, update or delete
it (and first clear a mailbox the employee left). :class:`Rounds` runs the deliveries of one
:class:`connectors.batching.MicroBatcher` batch concurrently, each through the connector's unchanged
per-delivery code; a call made through :meth:`Rounds.call` waits until every delivery still running
waits on a call too (or is done): then the waiting calls go out together through the connector's
``send``. N deliveries that each look up then write take two rounds: the N look-ups in one request,
the N writes in another, instead of 2N requests.

Guarantees:

- **Order**: a delivery awaits each call before making the next, so its calls keep their order; a
  MicroBatcher batch never holds two deliveries of one key, so per-key order holds as without
  batching.
- **One result per call**: ``send`` gets the round's calls and answers one result per call (the
  API's answer, of any status, or a :class:`ConnectorError`); the result reaches that call's delivery
  only, whose own code decides (a 404 on a delete is a success, a 429 its BackpressureError). A
  delivery's error is its own result: the others go on.
- **No crash, no hang**: ``send`` raising a ConnectorError gives each call of the round a copy of
  it; any other exception is each call's :class:`RetryableError` (an egress refusal: the uniform
  ConfigurationError); a result list of the wrong length fails the round's calls retryably. A
  delivery that awaits something else (a token, on a thread) holds the round until it calls or ends;
  the MicroBatcher's deadline cancels the whole batch, and :meth:`Rounds.run` cancels every delivery
  it started when it is cancelled.

What the batch modes share besides: :class:`RoundScope` (which round a call made now belongs to, and
the MicroBatcher's ``deliver_batch`` that sets it) and :func:`send_batch` (one batch request sent,
read, recorded for each delivery it carries and parsed into one result per call).
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import httpx
import structlog

from connectors.base import CallRecorder, DeliveryOutcome
from connectors.batching import BatchItem, ItemCalls, ItemResult
from connectors.egress import NOT_ALLOWED, refused
from connectors.exceptions import ConfigurationError, ConnectorError, RetryableError
from connectors.wire import Answer
from schemas.delivery import Delivery

log = structlog.get_logger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")


def as_connector_error(exc: Exception) -> ConnectorError:
    """``exc`` as the error the delivery worker acts on (what :mod:`connectors.redact` makes of an
    exception leaving ``deliver``): itself, the uniform egress refusal, or a RetryableError."""
    if isinstance(exc, ConnectorError):
        return exc
    if refused(exc):
        return ConfigurationError(NOT_ALLOWED)
    return RetryableError(f"{type(exc).__name__}: {exc}"[:500])


def _copy(exc: ConnectorError) -> ConnectorError:
    try:
        twin = copy.copy(exc)
    except Exception:
        return exc
    return twin if isinstance(twin, ConnectorError) else exc


class Rounds(Generic[Req, Res]):
    """One batch's deliveries, their calls sent round by round (see the module docstring)."""

    def __init__(
        self, send: Callable[[list[tuple[BatchItem, Req]]], Awaitable[Sequence[Res | ConnectorError]]]
    ):
        self._send = send
        self._active = 0
        self._waiting: list[tuple[BatchItem, Req, asyncio.Future[Res | ConnectorError]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.rounds = 0
        """Rounds sent so far."""

    async def run(
        self, items: Sequence[BatchItem], deliver: Callable[[BatchItem], Awaitable[DeliveryOutcome]]
    ) -> list[ItemResult]:
        """Runs ``deliver(item)`` for every item at once; one result per item, in their order."""

        async def one(item: BatchItem) -> ItemResult:
            try:
                return await deliver(item)
            except Exception as exc:
                return as_connector_error(exc)
            finally:
                self._active -= 1
                self._maybe_flush()

        self._active = len(items)
        jobs = [asyncio.ensure_future(one(item)) for item in items]
        try:
            return list(await asyncio.gather(*jobs))
        finally:
            for job in jobs:
                job.cancel()
            for task in list(self._tasks):
                task.cancel()

    async def call(self, item: BatchItem, request: Req) -> Res:
        """``request`` for ``item``, sent with the round; its answer, or its error raised."""
        future: asyncio.Future[Res | ConnectorError] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, request, future))
        self._maybe_flush()
        result = await future
        if isinstance(result, ConnectorError):
            raise result
        return result

    def _maybe_flush(self) -> None:
        if not self._waiting or len(self._waiting) < self._active:
            return
        round_, self._waiting = self._waiting, []
        self.rounds += 1
        task = asyncio.get_running_loop().create_task(self._flush(round_))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, round_: list[tuple[BatchItem, Req, asyncio.Future[Res | ConnectorError]]]) -> None:
        results: Sequence[Res | ConnectorError]
        try:
            results = await self._send([(item, request) for item, request, _ in round_])
            if len(results) != len(round_):
                raise TypeError(f"the batch sender gave {len(results)} results for {len(round_)} calls")
        except asyncio.CancelledError:
            results = [RetryableError("the batch was cancelled before its answer") for _ in round_]
            raise
        except ConnectorError as exc:
            results = [_copy(exc) for _ in round_]
        except Exception as exc:
            log.error("batched calls failed unexpectedly", error=repr(exc)[:500])
            error = as_connector_error(exc)
            results = [_copy(error) for _ in round_]
        finally:
            for (_, _, future), result in zip(round_, results, strict=False):
                if not future.done():
                    future.set_result(result)


class RoundScope(Generic[Req, Res]):
    """One connector kind's batch mode: which round (and which delivery) a call made now belongs to.

    :meth:`deliver_batch` sets it in each delivery's own task, so it is seen by that delivery's calls
    only: a call made outside a batch (or by another delivery) finds None and goes out on its own.
    """

    def __init__(self, name: str) -> None:
        self._current: contextvars.ContextVar[tuple[Rounds[Req, Res], BatchItem] | None] = (
            contextvars.ContextVar(name, default=None)
        )

    def current(self) -> tuple[Rounds[Req, Res], BatchItem] | None:
        """The round (and the delivery) a call made now belongs to; None outside a batch."""
        return self._current.get()

    async def deliver_batch(
        self,
        items: Sequence[BatchItem],
        send: Callable[[list[tuple[BatchItem, Req]]], Awaitable[Sequence[Res | ConnectorError]]],
        deliver_one: Callable[[Delivery, CallRecorder], Awaitable[DeliveryOutcome]],
    ) -> list[ItemResult]:
        """A MicroBatcher's ``deliver_batch``: ``deliver_one`` for every item, their calls sent round by
        round with ``send`` (see :class:`Rounds`); one result per item, in their order."""
        rounds: Rounds[Req, Res] = Rounds(send)

        async def deliver(item: BatchItem) -> DeliveryOutcome:
            self._current.set((rounds, item))  # this item's own task: its context only
            return await deliver_one(item.delivery, item.recorder)

        return await rounds.run(items, deliver)


async def send_batch(
    client: httpx.AsyncClient,
    url: str,
    request: httpx.Request,
    items: Sequence[BatchItem],
    parts: Sequence[str | bytes],
    ids: Sequence[str],
    parse: Callable[[Answer, list[str]], dict[str, Answer | ConnectorError]],
    shown: Callable[[str, Answer | ConnectorError], str],
) -> dict[str, Answer | ConnectorError]:
    """Sends one batch ``request`` to ``url`` carrying the calls ``ids`` (``items[i]``'s part of the
    body is ``parts[i]``): each call's result, ``parse`` of the answer read whole. Each item's attempt
    log shows the request (headers masked) with its own part, started before sending, and the answer
    with ``shown(id, result)`` as its own part.

    A request that got no answer (``httpx.TransportError``) gives each call its own RetryableError,
    recorded as every item's failure; any other exception is recorded, then raised unchanged.
    """
    where = f"{request.method} {url}"
    record = ItemCalls(items, request.method, url, request.headers, parts)
    try:
        response = await client.send(request, stream=True)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
    except httpx.TransportError as exc:
        error = f"{where}: {type(exc).__name__}: {exc}"
        record.fail(error)
        return {call_id: RetryableError(error) for call_id in ids}
    except BaseException as exc:
        record.fail(f"{where}: {type(exc).__name__}")
        raise
    answer = Answer(response.status_code, response.headers, content)
    results = parse(answer, list(ids))
    record.finish(answer.status_code, answer.headers, [shown(call_id, results[call_id]) for call_id in ids])
    return results
