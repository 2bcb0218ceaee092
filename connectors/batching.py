"""Batched delivery: concurrent ``deliver`` calls of one destination share one request.

The delivery worker runs one ordered lane per key and many keys at once, each lane awaiting its own
``connector.deliver(delivery, recorder)``. A connector whose destination accepts several changes in
one request (absync.v1 batch mode, Microsoft Graph ``$batch``, Google batch) keeps that contract and
hands its calls to a :class:`MicroBatcher`::

    async def setup(self) -> None:
        ...
        self.batcher = MicroBatcher(self.deliver_batch, max_items=20, linger=0.01,
                                    deadline=self.attempt_deadline, name=f"graph:{self.destination.id}")

    async def deliver(self, delivery: Delivery, recorder: CallRecorder) -> DeliveryOutcome:
        return await self.batcher.deliver(delivery, recorder)

    async def deliver_batch(self, items: Sequence[BatchItem]) -> list[DeliveryOutcome | ConnectorError]:
        ...   # one request for every item, one result per item, in the order of ``items``

    async def close(self) -> None:
        await self.batcher.close()   # first: pending callers fail retryably, then close the clients

The handler in :mod:`processors.delivery.handler` sees no difference: ``deliver`` returns the item's
:class:`connectors.base.DeliveryOutcome` or raises the item's :mod:`connectors.exceptions` error.

Guarantees of :class:`MicroBatcher`:

- **Flush**: a call joins the open batch; the batch is sent when it holds ``max_items`` items (at
  once) or ``linger`` seconds after its first item came (whichever is first). Several batches may be
  in flight at once (each in a task of its own). One call waits at most ``linger`` before its batch
  is sent.
- **One result per item**: each caller gets the result ``deliver_batch`` gave for its item (an outcome
  or a connector error, raised in that caller only: one item's failure is no other item's failure).
  When ``deliver_batch`` raises a :class:`ConnectorError`, every item of the batch gets it (a copy
  each); any other exception, a result list of the wrong length or a result that is neither an outcome
  nor a connector error fails every item with a :class:`RetryableError` saying so (never a crash).
- **Deadline**: one ``deliver_batch`` call may last ``deadline`` seconds; past it it is cancelled and
  every item fails with a retryable timeout. The caller's own attempt deadline (the worker's) still
  applies on top, linger included.
- **Cancellation**: a caller cancelled while its item waits for the flush takes the item out (it is
  never sent); a caller cancelled while its batch is in flight leaves the batch untouched (the other
  items get their results; its own item may reach the destination, as a cancelled single request
  may: at-least-once, the destination dedupes by delivery id).
- **Per-key order**: a batch never holds two items of one key, and an item of a key is not queued
  while an earlier item of that key is still in flight, even one whose caller gave up (a deadline):
  a newer change of an absence can never overtake an older one inside the batcher.
- **Close**: :meth:`MicroBatcher.close` fails every waiting item and every in-flight batch with a
  :class:`RetryableError` (the worker retries them) and returns when no batch task is left; a call
  after it fails at once, retryably. Nothing hangs.
- **Recording**: each caller's :class:`CallRecorder` is in its :class:`BatchItem`: the connector
  records in it what was sent and answered *for that item* (:class:`ItemCalls`: the batch request
  with the item's part of the request and of the answer), so one delivery's attempt log shows its
  own exchange. A recorder whose caller gave up may still be written; nobody reads it again.

Event-loop only (one loop): the worker's handler and the connector live on it.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from connectors.base import CallRecorder, DeliveryOutcome, RecordedCall
from connectors.exceptions import ConnectorError, RetryableError
from schemas.delivery import Delivery
from streams.logging import MASK

log = structlog.get_logger(__name__)

DEFAULT_LINGER = 0.01
"""Seconds a batch waits for more items after its first (10 ms: far below the latency targets)."""

ItemResult = DeliveryOutcome | ConnectorError
SendBatch = Callable[[Sequence["BatchItem"]], Awaitable[Sequence[ItemResult]]]
"""A connector's ``deliver_batch``: one result per item, in the order of the items."""


@dataclass(frozen=True, slots=True, eq=False)
class BatchItem:
    """One caller's delivery in a batch, with the recorder of its attempt."""

    delivery: Delivery
    recorder: CallRecorder


@dataclass(eq=False)
class _Pending:
    item: BatchItem
    result: asyncio.Future[ItemResult]
    finished: asyncio.Future[None]
    """Done when the item's batch is over (or the item left the queue), whatever its caller did."""
    sent: bool = field(default=False)


class MicroBatcher:
    """Batches the concurrent ``deliver`` calls of one destination (see the module docstring)."""

    def __init__(
        self,
        send: SendBatch,
        *,
        max_items: int,
        linger: float = DEFAULT_LINGER,
        deadline: float,
        name: str = "",
    ) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        if linger < 0 or deadline <= 0:
            raise ValueError("linger must be >= 0 and deadline > 0")
        self.send = send
        self.max_items = max_items
        self.linger = linger
        self.deadline = deadline
        self.name = name
        self._queue: list[_Pending] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: dict[str, asyncio.Future[None]] = {}
        """Key -> ``finished`` of its item queued or in flight (at most one per key)."""
        self._closed = False

    @property
    def waiting(self) -> int:
        """Items queued for the next flush."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Batches being sent."""
        return len(self._tasks)

    async def deliver(self, delivery: Delivery, recorder: CallRecorder) -> DeliveryOutcome:
        """``delivery``'s result once its batch is answered: its outcome, or its error raised."""
        key = delivery.key
        while (busy := self._busy.get(key)) is not None:
            await asyncio.wait([busy])  # an earlier item of this key is still out; never cancels it
        if self._closed:
            raise RetryableError(f"{self.name or 'batcher'}: the connector is closing, not sent")
        loop = asyncio.get_running_loop()
        pending = _Pending(BatchItem(delivery, recorder), loop.create_future(), loop.create_future())
        self._busy[key] = pending.finished
        self._queue.append(pending)
        if len(self._queue) >= self.max_items:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.linger, self._flush)
        try:
            result = await pending.result
        except asyncio.CancelledError:
            if not pending.sent and pending in self._queue:  # still queued: out, never sent
                self._queue.remove(pending)
                self._release(pending)
            raise
        if isinstance(result, ConnectorError):
            raise result
        return result

    def _flush(self) -> None:
        """Sends the queued items (up to ``max_items``) in a task of their own."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._queue = self._queue[: self.max_items], self._queue[self.max_items :]
        if self._queue:  # cannot happen with one flush per full batch; kept safe anyway
            self._timer = asyncio.get_running_loop().call_later(self.linger, self._flush)
        if not batch:
            return
        for pending in batch:
            pending.sent = True
        task = asyncio.get_running_loop().create_task(self._run(batch), name=f"batch {self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        results: Sequence[ItemResult | BaseException]
        try:
            async with asyncio.timeout(self.deadline):
                results = await self.send([p.item for p in batch])
            if len(results) != len(batch):
                raise TypeError(f"deliver_batch gave {len(results)} results for {len(batch)} items")
        except ConnectorError as exc:
            results = [_copy(exc) for _ in batch]
        except TimeoutError:
            results = [
                RetryableError(f"no complete answer to the batch within {self.deadline:g} s") for _ in batch
            ]
        except asyncio.CancelledError:  # close(): the batch is abandoned, its items retried later
            results = [RetryableError("the connector closed while the batch was in flight") for _ in batch]
        except Exception as exc:
            log.error("batch failed unexpectedly", batcher=self.name, error=repr(exc)[:500])
            results = [RetryableError(f"the batch failed: {type(exc).__name__}: {exc}") for _ in batch]
        for pending, result in zip(batch, results, strict=True):
            if not isinstance(result, DeliveryOutcome | ConnectorError):
                result = RetryableError(f"the batch gave no usable result for this item: {result!r}"[:300])
            if not pending.result.done():
                pending.result.set_result(result)
            self._release(pending)

    def _release(self, pending: _Pending) -> None:
        key = pending.item.delivery.key
        if self._busy.get(key) is pending.finished:
            del self._busy[key]
        if not pending.finished.done():
            pending.finished.set_result(None)

    async def close(self) -> None:
        """Fails what waits and what is in flight, retryably; returns when no batch task is left."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queued, self._queue = self._queue, []
        for pending in queued:
            if not pending.result.done():
                pending.result.set_result(
                    RetryableError("the connector closed before the batch was sent, not sent")
                )
            self._release(pending)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _copy(exc: ConnectorError) -> ConnectorError:
    """A copy of ``exc`` per item (one exception object raised in several tasks would share its
    traceback); ``exc`` itself when it cannot be copied."""
    try:
        twin = copy.copy(exc)
    except Exception:  # an exotic constructor: the same object is still a correct answer
        return exc
    return twin if isinstance(twin, ConnectorError) else exc


class ItemCalls:
    """One batch request as each item's attempt log shows it: the request (URL, headers, masked)
    with the item's own part of the body, and the answer's status and headers with the item's own
    part of the answer. Start it before sending (a timed-out batch then shows an open call that the
    worker closes with the attempt's error), then :meth:`finish` or :meth:`fail` it once."""

    def __init__(
        self,
        items: Sequence[BatchItem],
        method: str,
        url: str,
        headers: Mapping[str, str],
        parts: Sequence[str | bytes],
        *,
        secret_headers: Collection[str] = (),
    ) -> None:
        if len(parts) != len(items):
            raise ValueError("one request part per item")
        hidden = {name.lower() for name in secret_headers}
        shown = {name: (MASK if name.lower() in hidden else value) for name, value in headers.items()}
        self.items = list(items)
        self.calls: list[RecordedCall] = [
            item.recorder.start(method, url, shown, part) for item, part in zip(items, parts, strict=True)
        ]

    def finish(
        self,
        status: int,
        headers: Mapping[str, str],
        answers: Sequence[str | bytes | None],
    ) -> None:
        """The answer: ``status`` and ``headers`` of the batch, ``answers[i]`` the part of item i."""
        for item, call, answer in zip(self.items, self.calls, answers, strict=True):
            item.recorder.finish(call, status, headers, answer)

    def fail(self, error: str) -> None:
        """No answer (timeout, connection error): every item's call shows ``error``."""
        for item, call in zip(self.items, self.calls, strict=True):
            item.recorder.finish(call, error=error)
