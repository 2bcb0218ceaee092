"""The ``http`` connector's absync.v1 **batch mode**: several changes in one signed request.

Opt-in per destination (setting ``batch_size``, 2 to :data:`MAX_BATCH_SIZE`; 1, the default, is off);
documented for receivers in docs/http-sync.md ("Batch mode"). The connector's ``deliver`` goes
through a :class:`connectors.batching.MicroBatcher`, whose flushes call
:meth:`BatchSender.deliver_batch` here:

- **request**: ``POST {url}``, ``Content-Type: application/json``, body
  ``{"type":"absync.batch","batch_id":"bat_...","items":[<absync.v1 body>, ...]}``: each item is
  exactly the single-mode body (its ``delivery_id`` is the item's id); signed per Standard Webhooks
  with ``webhook-id`` = ``Idempotency-Key`` = the batch id (new for every request: a retry regroups
  items). A request body stays under :data:`MAX_BODY_BYTES`: a flush whose items would exceed it is
  split into several requests (sent concurrently).
- **answer**: ``2xx`` with ``{"results":[{"id":"<delivery_id>","status":<int>,"error":"...",
  "retry_after":<seconds>}, ...]}``; each item's ``status`` is mapped as the single mode maps an
  answer's (2xx done; 404/410 to a removal done; 429, 408, 425, 5xx retried; other 4xx Error;
  ``retry_after`` read as a ``Retry-After``).
- **whole-request failure**: a non-2xx answer is every item's answer (5xx, 429 with Retry-After, a
  timeout, a refused or dropped connection: every item retried; a 4xx such as 401: every item in
  Error, as in single mode).
- **defensive parsing**: the answer is read up to :func:`answer_limit` bytes; an answer that is not
  such JSON (or was cut), a missing result, two results for one id or a result without a valid
  status fail *that* item (or every item, when the whole answer is unusable) with a
  :class:`RetryableError` naming the problem; results for ids not in the batch are ignored. Never a
  crash, never an item counted as done without its own 2xx.
- **connection test**: an empty batch, answered 2xx with ``{"results":[]}`` (:meth:`BatchSender.ping`).
- **recording**: each item's attempt shows the batch request (URL, headers masked) with its own item
  as the request body, and the answer's status with its own result as the response body
  (:class:`connectors.batching.ItemCalls`).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Collection, Sequence
from typing import Annotated, Any

import httpx
from pydantic import AfterValidator

from connectors.base import CallRecorder, DeliveryOutcome, read_body
from connectors.batching import BatchItem, ItemCalls, ItemResult, MicroBatcher
from connectors.egress import NOT_ALLOWED, refused
from connectors.exceptions import ConfigurationError, ConnectorError, PermanentError, RetryableError
from connectors.wire import send_recorded, status_error
from schemas.delivery import Delivery, Operation

MAX_BATCH_SIZE = 100
"""The most changes one batch request carries."""
MAX_BODY_BYTES = 1_000_000
"""A request body stays under this many bytes (a flush is split into several requests if needed)."""
ANSWER_BASE_BYTES = 16_384
ANSWER_ITEM_BYTES = 2_048
"""The answer to a batch of n items is read up to ``ANSWER_BASE_BYTES + n * ANSWER_ITEM_BYTES``."""
EXCERPT_CHARS = 300
RETRYABLE_STATUSES = frozenset({408, 425, 429})
_ENVELOPE_BYTES = 80

Prepare = Callable[[str, bytes], tuple[httpx.AsyncClient, httpx.Request]]
"""(message id, body) -> the client to use and the signed ``POST {url}`` request to send."""


def check_batch_size(value: Any) -> Any:
    """The settings model's check: None, or an integer from 1 to :data:`MAX_BATCH_SIZE`."""
    if value is None:
        return value
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_BATCH_SIZE:
        raise ValueError(f"must be an integer from 1 to {MAX_BATCH_SIZE} (1: one request per change)")
    return value


BatchSizeSetting = Annotated[Any, AfterValidator(check_batch_size)]
"""The ``batch_size`` setting, checked when a destination is written (API, YAML, console)."""


def batch_size_of(settings: dict[str, Any], destination_id: str, payload_format: str) -> int:
    """The destination's batch size (1: batch mode off); ConfigurationError when it is invalid or set
    for a format that has no batch mode."""
    raw = settings.get("batch_size")
    try:
        size = int(check_batch_size(raw) or 1)
    except ValueError as exc:
        raise ConfigurationError(f"destination {destination_id}: batch_size {exc}, got {raw!r}") from None
    if size > 1 and payload_format != "absync.v1":
        raise ConfigurationError(f"destination {destination_id}: batch_size is for format absync.v1 only")
    return size


def answer_limit(items: int) -> int:
    return ANSWER_BASE_BYTES + items * ANSWER_ITEM_BYTES


def split(parts: Sequence[bytes], max_bytes: int = MAX_BODY_BYTES) -> list[range]:
    """Consecutive index ranges of ``parts`` whose batch body stays under ``max_bytes`` (an item
    larger than that alone goes in a request of its own)."""
    groups: list[range] = []
    start, size = 0, _ENVELOPE_BYTES
    for i, part in enumerate(parts):
        if i > start and size + len(part) + 1 > max_bytes:
            groups.append(range(start, i))
            start, size = i, _ENVELOPE_BYTES
        size += len(part) + 1
    if parts:
        groups.append(range(start, len(parts)))
    return groups


def batch_body(batch_id: str, parts: Sequence[bytes]) -> bytes:
    """The compact JSON envelope around the items' already-encoded bodies."""
    head = json.dumps({"type": "absync.batch", "batch_id": batch_id}, separators=(",", ":"))
    return head[:-1].encode() + b',"items":[' + b",".join(parts) + b"]}"


class BatchSender:
    """Sends batches of absync.v1 changes for one destination (module docstring)."""

    def __init__(
        self,
        url: str,
        prepare: Prepare,
        encode: Callable[[Delivery], bytes],
        *,
        size: int,
        timeout: float,
        deadline: float,
        secret_headers: Collection[str],
        name: str = "",
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.url = url
        self.prepare = prepare
        self.encode = encode
        self.timeout = timeout
        self.secret_headers = tuple(secret_headers)
        self.max_body_bytes = max_body_bytes
        self.batcher = MicroBatcher(self.deliver_batch, max_items=size, deadline=deadline, name=name)
        """Where the connector's ``deliver`` calls go: they are flushed into :meth:`deliver_batch`."""

    async def deliver(self, delivery: Delivery, recorder: CallRecorder) -> DeliveryOutcome:
        """``delivery`` sent in a batch with the concurrent ones; its own outcome or error."""
        return await self.batcher.deliver(delivery, recorder)

    async def close(self) -> None:
        """Waiting and in-flight items fail retryably (before the connector closes its clients)."""
        await self.batcher.close()

    async def ping(self, recorder: CallRecorder) -> DeliveryOutcome:
        """The connection test in batch mode: an empty batch (signed, recorded), which a receiver of
        the batch mode answers 2xx with ``{"results":[]}``; any other answer raises as a delivery's."""
        ping_id = f"ping_{uuid.uuid4().hex}"
        client, request = self.prepare(ping_id, batch_body(ping_id, []))
        where = f"POST {self.url} (an empty batch)"
        try:
            answer = await send_recorded(
                client, request, recorder, limit=ANSWER_BASE_BYTES, secret_headers=self.secret_headers
            )
        except httpx.TransportError as exc:
            raise RetryableError(f"{where}: {type(exc).__name__}: {exc}") from exc
        if not answer.is_success:
            raise _whole_error(where, answer.status_code, answer.text, answer.headers)
        _, problem = _parse(answer.content, ANSWER_BASE_BYTES, set())
        if problem is not None:
            raise PermanentError(
                f"{where} answered {answer.status_code}, {problem}: does the receiver support the batch "
                "mode (docs/http-sync.md)?",
                status_code=answer.status_code,
            )
        return DeliveryOutcome(
            summary=f"{where} answered {answer.status_code}: reachable, batch mode understood"
        )

    async def deliver_batch(self, items: Sequence[BatchItem]) -> list[ItemResult]:
        """One result per item, in order (the :data:`connectors.batching.SendBatch` contract)."""
        parts = [self.encode(item.delivery) for item in items]
        groups = split(parts, self.max_body_bytes)
        answers = await asyncio.gather(
            *(self._send([items[i] for i in g], [parts[i] for i in g]) for g in groups)
        )
        return [result for answer in answers for result in answer]

    async def _send(self, items: list[BatchItem], parts: list[bytes]) -> list[ItemResult]:
        batch_id = f"bat_{uuid.uuid4().hex}"
        client, request = self.prepare(batch_id, batch_body(batch_id, parts))
        where = f"POST {self.url} (batch {batch_id} of {len(items)})"
        calls = ItemCalls(items, "POST", self.url, request.headers, parts, secret_headers=self.secret_headers)
        limit = answer_limit(len(items))
        try:
            response = await client.send(request, stream=True)
            try:
                content = await read_body(response, limit)
            finally:
                await response.aclose()
        except Exception as exc:
            if refused(exc):  # the egress policy: one uniform error, as in single mode
                calls.fail(NOT_ALLOWED)
                return [ConfigurationError(NOT_ALLOWED) for _ in items]
            if not isinstance(exc, httpx.TransportError):
                raise
            text = (
                f"{where}: no answer within {self.timeout:g} s ({type(exc).__name__})"
                if isinstance(exc, httpx.TimeoutException)
                else f"{where}: {type(exc).__name__}: {exc}"
            )
            calls.fail(text)
            return [RetryableError(text) for _ in items]
        status, headers = response.status_code, response.headers
        text = content[:limit].decode("utf-8", errors="replace")
        if not 200 <= status < 300:
            calls.finish(status, headers, [text] * len(items))
            return [_whole_error(where, status, text, headers) for _ in items]
        results, problem = _parse(content, limit, {item.delivery.delivery_id for item in items})
        if problem is not None:
            calls.finish(status, headers, [text] * len(items))
            return [RetryableError(f"{where} answered {status}, {problem}") for _ in items]
        shown: list[str | None] = []
        outcomes: list[ItemResult] = []
        for item in items:
            found = results.get(item.delivery.delivery_id, [])
            shown.append(json.dumps(found[0] if len(found) == 1 else found, ensure_ascii=False))
            outcomes.append(_item_result(where, status, item.delivery, found))
        calls.finish(status, headers, shown)
        return outcomes


def _whole_error(where: str, status: int, text: str, headers: httpx.Headers) -> ConnectorError:
    """A non-2xx answer to the whole request, mapped as the single mode maps an answer (a removal's
    404 is *not* a success here: it is the batch URL that is missing)."""
    excerpt = text[:EXCERPT_CHARS].strip()
    detail = f"{where} answered {status}" + (f": {excerpt}" if excerpt else "")
    error = status_error(
        status, detail, retry_after=headers.get("Retry-After"), retryable_statuses=RETRYABLE_STATUSES
    )
    if isinstance(error, PermanentError) and 300 <= status < 400:
        return PermanentError(f"{detail}: redirects are not followed, update the url", status_code=status)
    return error


def _parse(content: bytes, limit: int, ids: set[str]) -> tuple[dict[str, list[dict[str, Any]]], str | None]:
    """Results by item id (only ids of the batch), or the reason the whole answer is unusable."""
    if len(content) > limit:
        return {}, f"its answer is longer than {limit} bytes (not read)"
    try:
        doc = json.loads(content)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        return {}, 'its answer is not JSON (expected {"results":[...]})'
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, list):
        return {}, 'its answer has no "results" list'
    found: dict[str, list[dict[str, Any]]] = {}
    for entry in results:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"] in ids:
            found.setdefault(entry["id"], []).append(entry)
    return found, None


def _item_result(where: str, status: int, delivery: Delivery, found: list[dict[str, Any]]) -> ItemResult:
    """One item's outcome or error from its results in the answer (exactly one expected)."""
    if not found:
        return RetryableError(f"{where} answered {status} without a result for this item")
    if len(found) > 1:
        return RetryableError(f"{where} answered {status} with {len(found)} results for this item")
    entry = found[0]
    item_status = entry.get("status")
    if not isinstance(item_status, int) or isinstance(item_status, bool) or not 100 <= item_status <= 599:
        return RetryableError(f"{where}: the item's result has no valid status: {str(entry)[:EXCERPT_CHARS]}")
    if 200 <= item_status < 300 or (delivery.operation is Operation.DELETE and item_status in (404, 410)):
        return DeliveryOutcome(
            summary=f"{where} answered {status}, this item {item_status}",
            details={"status": item_status, "batch_status": status},
        )
    message = entry.get("error")
    text = "" if message is None else message if isinstance(message, str) else json.dumps(message)
    excerpt = text[:EXCERPT_CHARS].strip()
    detail = f"{where}: this item answered {item_status}" + (f": {excerpt}" if excerpt else "")
    retry_after = entry.get("retry_after")
    error = status_error(
        item_status,
        detail,
        retry_after=None if retry_after is None else str(retry_after)[:50],
        retryable_statuses=RETRYABLE_STATUSES,
    )
    if isinstance(error, PermanentError) and item_status == 410:
        return PermanentError(f"{detail} (the receiver says it is gone)", status_code=item_status)
    return error
