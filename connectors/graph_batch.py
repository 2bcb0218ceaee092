"""Microsoft Graph JSON batching, as pure functions (no I/O): build a ``$batch`` body, read its answer.

The wire format (learn.microsoft.com/graph/json-batching):

* ``POST {graph}/v1.0/$batch``, ``Content-Type: application/json``, body
  ``{"requests": [{"id", "method", "url", "headers"?, "body"?}, ...]}``: at most
  :data:`MAX_REQUESTS` (20) requests; ``id`` unique in the batch (compared case-insensitively);
  ``url`` relative to the version root (``/users/x/events``); a request with a ``body`` names its
  ``Content-Type`` in ``headers``;
* the answer is ``200`` when the batch could be read, ``{"responses": [{"id", "status",
  "headers"?, "body"?}, ...]}`` **in any order**: each request has its own status (a 429 with its own
  ``Retry-After``, a 404, ...). A ``400`` (or any non-200) is the batch refused as a whole.

Guarantees of :func:`parse_batch_answer`: it never raises, whatever the bytes; it returns exactly one
result per request id asked, an :class:`connectors.wire.Answer` (any status: the caller maps it as it
maps a direct call) or a :class:`connectors.exceptions.ConnectorError`. A response missing, malformed,
or for an id not asked is a :class:`RetryableError` for that request alone (only it is retried), never
a crash; an unknown or duplicate response is ignored. Reading is bounded: the body is read once
(``json.loads`` of bytes already capped by the client), at most :data:`MAX_RESPONSES_READ` entries are
looked at, a header map keeps at most :data:`MAX_HEADERS` string entries.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from connectors.exceptions import ConnectorError, RetryableError
from connectors.wire import Answer, status_error

MAX_REQUESTS = 20
"""Graph refuses a batch of more than 20 requests."""
MAX_PER_MAILBOX = 4
"""Graph (Exchange) runs at most 4 concurrent requests per mailbox; a parallel batch with more for one
mailbox gets 429s for the rest, so :func:`split_batches` never puts more than this in one batch."""
MAX_RESPONSES_READ = 4 * MAX_REQUESTS
"""Entries of ``responses`` looked at (a hostile answer with a million entries costs this many)."""
MAX_HEADERS = 64
METHODS = frozenset({"GET", "POST", "PATCH", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True)
class SubRequest:
    """One request of a batch. ``url`` is relative to Graph's version root and starts with ``/``."""

    id: str
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    """A JSON value, sent as is (``None``: no body)."""
    mailbox: str = ""
    """The mailbox the request touches (for :func:`split_batches`); not sent."""


def relative_url(base_url: str, url: str) -> str:
    """``url`` (absolute, under ``base_url``) as the relative url a batch request carries.

    Raises ValueError when ``url`` is not under ``base_url`` (a batch only reaches its own Graph)."""
    base = base_url.rstrip("/")
    if not url.startswith(base + "/"):
        raise ValueError(f"{url!r} is not under {base!r}")
    return url[len(base) :]


def build_batch(requests: Sequence[SubRequest]) -> bytes:
    """The JSON body of one ``$batch`` call. Raises ValueError for what Graph would refuse: no
    request, more than :data:`MAX_REQUESTS`, an empty or repeated id (case-insensitive), an unknown
    method, a url that is not relative (``/...``)."""
    if not requests:
        raise ValueError("a $batch needs at least one request")
    if len(requests) > MAX_REQUESTS:
        raise ValueError(f"a $batch holds at most {MAX_REQUESTS} requests, got {len(requests)}")
    seen: set[str] = set()
    for request in requests:
        key = request.id.lower()
        if not request.id or key in seen:
            raise ValueError(f"$batch request ids must be unique and non-empty, got {request.id!r}")
        seen.add(key)
    out = [entry(request) for request in requests]
    return json.dumps({"requests": out}, ensure_ascii=False, separators=(",", ":")).encode()


def entry(request: SubRequest) -> dict[str, Any]:
    """One request as the ``requests`` array holds it. Raises ValueError for an unknown method or a
    url that is not relative (``/...``)."""
    if request.method not in METHODS:
        raise ValueError(f"unknown method {request.method!r}")
    if not request.url.startswith("/") or request.url.startswith("//"):
        raise ValueError(f"a $batch url is relative to the version root, got {request.url!r}")
    item: dict[str, Any] = {"id": request.id, "method": request.method, "url": request.url}
    headers = dict(request.headers)
    if request.body is not None:
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"
        item["body"] = request.body
    if headers:
        item["headers"] = headers
    return item


def split_batches(
    requests: Sequence[SubRequest], size: int = MAX_REQUESTS, per_mailbox: int = MAX_PER_MAILBOX
) -> list[list[SubRequest]]:
    """``requests`` in batches of at most ``size``, with at most ``per_mailbox`` requests for one
    mailbox in each (order kept within a batch; a request goes to the first batch with room)."""
    batches: list[list[SubRequest]] = []
    counts: list[dict[str, int]] = []
    for request in requests:
        for batch, count in zip(batches, counts, strict=True):
            if len(batch) < size and count.get(request.mailbox.lower(), 0) < per_mailbox:
                break
        else:
            batch, count = [], {}
            batches.append(batch)
            counts.append(count)
        batch.append(request)
        key = request.mailbox.lower()
        count[key] = count.get(key, 0) + 1
    return batches


def batch_error(answer: Answer, detail: str) -> ConnectorError:
    """The error every request of a batch gets when Graph refused the batch as a whole (``answer``
    is not 200). A 429/503/504 is backpressure, a 5xx retryable; any other status is retryable too:
    a refused envelope says nothing about the request itself (it goes again, on the retry ladder)."""
    text = f"Graph $batch answered {answer.status_code}: {detail}".strip()
    error = status_error(
        answer.status_code,
        text,
        retry_after=answer.headers.get("Retry-After"),
        backpressure_statuses=(429, 503, 504),
    )
    if error.retryable:
        return error
    return RetryableError(text, status_code=answer.status_code)


def parse_batch_answer(answer: Answer, ids: Sequence[str]) -> dict[str, Answer | ConnectorError]:
    """One result per id of ``ids`` (see the module docstring); never raises."""
    missing = "Graph's $batch answer holds no valid response for this request"
    if answer.status_code != 200:
        error = batch_error(answer, answer.text[:200])
        return dict.fromkeys(ids, error)
    try:
        document = json.loads(answer.content)
    except (ValueError, RecursionError):
        document = None
    entries = document.get("responses") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        error = RetryableError(f"{missing}: the answer is not a $batch response document")
        return dict.fromkeys(ids, error)
    wanted = {i.lower(): i for i in ids}
    results: dict[str, Answer | ConnectorError] = {}
    for entry in entries[:MAX_RESPONSES_READ]:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        key = wanted.get(entry["id"].lower())
        if key is None or key in results:
            continue
        try:
            answer_of_entry = _entry_answer(entry)
        except (ValueError, RecursionError):  # a body nested deeper than the encoder goes
            answer_of_entry = None
        results[key] = answer_of_entry or RetryableError(f"{missing} (malformed response entry)")
    for key in ids:
        results.setdefault(key, RetryableError(missing))
    return results


def _entry_answer(entry: Mapping[str, Any]) -> Answer | None:
    status = entry.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        return None
    raw_headers = entry.get("headers")
    headers: list[tuple[str, str]] = []
    if isinstance(raw_headers, dict):
        for name, value in list(raw_headers.items())[:MAX_HEADERS]:
            if isinstance(name, str) and isinstance(value, str | int | float) and not isinstance(value, bool):
                headers.append((name, str(value)))
    body = entry.get("body")
    if body is None:
        content = b""
    elif isinstance(body, str) and not _is_json_type(headers):
        # Graph sends a body that is not JSON as base64 (an image, a MIME message...).
        try:
            content = base64.b64decode(body, validate=False)
        except ValueError:
            content = body.encode()
    else:
        content = json.dumps(body, ensure_ascii=False).encode()
    return Answer(status, httpx.Headers(headers), content)


def _is_json_type(headers: Sequence[tuple[str, str]]) -> bool:
    for name, value in headers:
        if name.lower() == "content-type":
            return "json" in value.lower()
    return True
