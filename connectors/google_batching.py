"""The Google connector's batch mode (setting ``batch_requests: true``): the calls of concurrent
deliveries go out together in batch requests (``POST {api_root}batch/calendar/v3``, multipart/mixed,
at most 50 calls each).

:class:`connectors.google.GoogleCalendarConnector` hands its ``deliver`` calls to a
:class:`connectors.batching.MicroBatcher`; :func:`deliver_batch` runs the batch's deliveries through
the connector's own per-delivery code in :class:`connectors.subcalls.Rounds`, and each Calendar call
they make (:meth:`GoogleCalendarConnector._execute`) goes into the current round (:func:`call`).
The call is still built by google-api-python-client (from its discovery document), and its token is
still google-auth's: each part carries the ``Authorization`` of the employee it acts for
(domain-wide delegation), so one batch serves many employees.

Guarantees, on top of the connector's (deterministic event ids, per-key order, one attempt record
per delivery):

- each call's answer is read like a direct call's (the same :class:`HttpError` mapping): a 403
  ``rateLimitExceeded`` or 429 is that delivery's BackpressureError (with the part's Retry-After), a
  409 on an insert that delivery's update, a 404/410 on a delete "already gone"; the others go on;
- a batch refused as a whole, cut off or unanswered fails the calls it carried, retryably (see
  :func:`connectors.google_batch.parse_batch_answer`);
- each delivery's attempt shows, per call, the batch request (headers masked) with its own part,
  its ``Authorization`` masked, and the batch's status and headers with its own part of the answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httplib2
from google_auth_httplib2 import Request
from googleapiclient.errors import HttpError

from connectors.batching import BatchItem, ItemResult
from connectors.exceptions import ConnectorError
from connectors.google_batch import MAX_REQUESTS, SubRequest, build_batch, parse_batch_answer
from connectors.subcalls import Rounds, RoundScope, send_batch
from connectors.wire import Answer
from streams.logging import MASK

if TYPE_CHECKING:
    from connectors.google import GoogleCalendarConnector

__all__ = ["MAX_REQUESTS", "call", "deliver_batch", "in_round"]

_NOT_IN_PART = ("content-length", "host", "accept-encoding")
"""Headers a part does not carry (its length is computed; a compressed part could not be read)."""
GoogleRounds = Rounds[SubRequest, Answer]
_scope: RoundScope[SubRequest, Answer] = RoundScope("google_round")


def in_round() -> tuple[GoogleRounds, BatchItem] | None:
    """The round (and the delivery) a Calendar call made now belongs to; None outside a batch."""
    return _scope.current()


async def deliver_batch(connector: GoogleCalendarConnector, items: Sequence[BatchItem]) -> list[ItemResult]:
    """The MicroBatcher's ``deliver_batch``: one result per item, in their order."""
    return await _scope.deliver_batch(
        items, lambda calls: send_round(connector, calls), connector.deliver_one
    )


async def call(
    connector: GoogleCalendarConnector,
    where: tuple[GoogleRounds, BatchItem],
    request: Any,
    email: str,
    tolerate: tuple[int, ...],
) -> int:
    """``request`` (a google-api-python-client ``HttpRequest``, not executed) sent with the current
    round, with ``email``'s token; its status, or the connector's error for it (``tolerate``: statuses
    returned, not raised)."""
    rounds, item = where
    credentials = connector.credentials_for(email)
    transport = Request(connector.recording_http(item.recorder))
    url = urlsplit(request.uri)
    body = request.body.encode() if isinstance(request.body, str) else request.body
    path = url.path + (f"?{url.query}" if url.query else "")
    for refreshed in (False, True):
        if refreshed or not credentials.valid:  # google-auth's own check (expiry with its clock skew)
            await connector.run_call(lambda: credentials.refresh(transport), email)  # type: ignore[no-untyped-call]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_IN_PART}
        credentials.apply(headers)  # type: ignore[no-untyped-call]
        answer = await rounds.call(item, SubRequest("", request.method, path, headers, body))
        if answer.status_code != 401:
            break
        # as google-auth's AuthorizedHttp: a token refused once is refreshed and the call sent again
    if 200 <= answer.status_code < 300:
        return answer.status_code
    response = httplib2.Response({"status": str(answer.status_code), **dict(answer.headers)})
    error = HttpError(response, answer.content, uri=request.uri)
    if answer.status_code in tolerate:
        return answer.status_code
    raise connector.error_for(error)


async def send_round(
    connector: GoogleCalendarConnector, calls: list[tuple[BatchItem, SubRequest]]
) -> list[Answer | ConnectorError]:
    """One round's calls, in batch requests of at most :data:`MAX_REQUESTS` (sent at once)."""
    base = uuid.uuid4().hex
    numbered = [dataclasses.replace(sub, content_id=f"{base}+{n}") for n, (_, sub) in enumerate(calls, 1)]
    items = [item for item, _ in calls]
    chunks = [range(i, min(i + MAX_REQUESTS, len(calls))) for i in range(0, len(calls), MAX_REQUESTS)]
    answers: dict[str, Answer | ConnectorError] = {}
    for found in await asyncio.gather(
        *(_send(connector, [numbered[i] for i in chunk], [items[i] for i in chunk]) for chunk in chunks)
    ):
        answers.update(found)
    return [answers[sub.content_id] for sub in numbered]


async def _send(
    connector: GoogleCalendarConnector, batch: list[SubRequest], items: list[BatchItem]
) -> dict[str, Answer | ConnectorError]:
    client = connector.http_client()
    url = f"{connector.api_root.rstrip('/')}/batch/calendar/v3"
    content_type, body = build_batch(batch)
    request = client.build_request("POST", url, content=body, headers={"Content-Type": content_type})
    for sub, item in zip(batch, items, strict=True):
        for name, value in sub.headers.items():
            if name.lower() == "authorization":
                item.recorder.learn(value)
    return await send_batch(
        client,
        url,
        request,
        items,
        [_shown_request(sub) for sub in batch],
        [sub.content_id for sub in batch],
        parse_batch_answer,
        lambda _, result: _shown_answer(result),
    )


def _shown_request(sub: SubRequest) -> str:
    """A delivery's own part of the batch request, its Authorization masked."""
    lines = [f"Content-ID: <{sub.content_id}>", "", f"{sub.method} {sub.path} HTTP/1.1"]
    lines += [f"{k}: {MASK if k.lower() == 'authorization' else v}" for k, v in sub.headers.items()]
    return "\r\n".join(lines) + "\r\n\r\n" + (sub.body or b"").decode("utf-8", errors="replace")


def _shown_answer(result: Answer | ConnectorError) -> str:
    """A delivery's own part of the batch answer."""
    if isinstance(result, ConnectorError):
        return f"<no usable response for this call: {result.message}>"
    head = [f"HTTP/1.1 {result.status_code}", *(f"{k}: {v}" for k, v in result.headers.items())]
    return "\r\n".join(head) + "\r\n\r\n" + result.text
