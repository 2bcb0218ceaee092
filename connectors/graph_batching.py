"""The Graph connector's batch mode (setting ``batch_requests: true``): the calls of concurrent
deliveries go out together in JSON batches (``POST {graph_base_url}/$batch``, 20 requests each).

:class:`connectors.graph.GraphConnector` hands its ``deliver`` calls to a
:class:`connectors.batching.MicroBatcher`; :func:`deliver_batch` runs the batch's deliveries through
the connector's own per-delivery code in :class:`connectors.subcalls.Rounds`, and every Graph call
they make (:meth:`GraphConnector._call`) goes into the current round instead of its own request
(:func:`call`). A round is split by :func:`connectors.graph_batch.split_batches` (20 requests, at
most 4 per mailbox: Exchange's concurrency per mailbox), its batches sent one after the other.

Guarantees, on top of those of the connector (idempotent creates through ``transactionId``,
per-key order, one attempt record per delivery):

- each request's answer is read like a direct call's: a 429 with its Retry-After is that delivery's
  BackpressureError, a 404 on an event that delivery's "already gone"; the others are unaffected;
- a batch refused as a whole, cut off or unanswered fails the calls it carried, retryably (see
  :func:`connectors.graph_batch.parse_batch_answer`), never the others of the round;
- each delivery's attempt shows, per call, the ``$batch`` request (headers masked) with its own
  request of the body, and the batch's status and headers with its own response.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import httpx

from connectors.batching import BatchItem, ItemResult
from connectors.exceptions import ConnectorError
from connectors.graph_batch import (
    SubRequest,
    build_batch,
    entry,
    parse_batch_answer,
    relative_url,
    split_batches,
)
from connectors.subcalls import Rounds, RoundScope, send_batch
from connectors.wire import Answer

if TYPE_CHECKING:
    from connectors.graph import GraphConnector

MAX_REQUESTS = 20
"""Deliveries per MicroBatcher batch: each round of their calls then fits one $batch (mailboxes
permitting)."""
GraphRounds = Rounds[SubRequest, Answer]
_scope: RoundScope[SubRequest, Answer] = RoundScope("graph_round")


def in_round() -> tuple[GraphRounds, BatchItem] | None:
    """The round (and the delivery) a Graph call made now belongs to; None outside a batch."""
    return _scope.current()


async def deliver_batch(connector: GraphConnector, items: Sequence[BatchItem]) -> list[ItemResult]:
    """The MicroBatcher's ``deliver_batch``: one result per item, in their order."""
    return await _scope.deliver_batch(
        items, lambda calls: send_round(connector, calls), connector.deliver_one
    )


async def call(
    where: tuple[GraphRounds, BatchItem], base_url: str, request: httpx.Request, mailbox: str
) -> Answer:
    """``request`` (built as for a direct call) sent with the current round; its answer."""
    rounds, item = where
    body = json.loads(request.content) if request.content else None
    headers = (
        {k: v for k, v in request.headers.items() if k.lower() == "content-type"} if body is not None else {}
    )
    sub = SubRequest("", request.method, relative_url(base_url, str(request.url)), headers, body, mailbox)
    return await rounds.call(item, sub)


async def send_round(
    connector: GraphConnector, calls: list[tuple[BatchItem, SubRequest]]
) -> list[Answer | ConnectorError]:
    """One round's calls, in as many ``$batch`` requests as needed, one after the other: a round of
    at most 20 calls needs more than one only when a mailbox has more than 4 of them, and sending
    those at once would break the mailbox's concurrency again."""
    numbered = [dataclasses.replace(sub, id=str(n)) for n, (_, sub) in enumerate(calls, 1)]
    owner = {sub.id: item for sub, (item, _) in zip(numbered, calls, strict=True)}
    answers: dict[str, Answer | ConnectorError] = {}
    for batch in split_batches(numbered):
        answers.update(await _send(connector, batch, [owner[s.id] for s in batch]))
    return [answers[sub.id] for sub in numbered]


async def _send(
    connector: GraphConnector, batch: list[SubRequest], items: list[BatchItem]
) -> dict[str, Answer | ConnectorError]:
    client = connector.http_client()
    token = await connector.bearer_token(items[0].recorder)
    url = f"{connector.base_url}/$batch"
    request = client.build_request(
        "POST",
        url,
        content=build_batch(batch),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    parts = [json.dumps(entry(sub), ensure_ascii=False) for sub in batch]
    return await send_batch(
        client, url, request, items, parts, [sub.id for sub in batch], parse_batch_answer, _shown
    )


def _shown(request_id: str, result: Answer | ConnectorError) -> str:
    """What a delivery's attempt log shows of its own response in the batch's answer."""
    if isinstance(result, ConnectorError):
        return f"<no usable response for request {request_id}: {result.message}>"
    try:
        body = json.loads(result.content) if result.content else None
    except (ValueError, RecursionError):
        body = result.text
    shown = {"id": request_id, "status": result.status_code, "headers": dict(result.headers), "body": body}
    return json.dumps(shown, ensure_ascii=False)
