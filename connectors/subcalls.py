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
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import structlog

from connectors.base import DeliveryOutcome
from connectors.batching import BatchItem, ItemResult
from connectors.egress import NOT_ALLOWED, refused
from connectors.exceptions import ConfigurationError, ConnectorError, RetryableError

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
