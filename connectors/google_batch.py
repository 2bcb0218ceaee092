"""Google Calendar batch requests, as pure functions (no I/O): build a ``multipart/mixed`` body, read
its answer.

The wire format (developers.google.com/workspace/calendar/api/guides/batch):

* ``POST {root}batch/calendar/v3`` with ``Content-Type: multipart/mixed; boundary=...``; each part is
  ``Content-Type: application/http`` with a ``Content-ID``, and holds one whole HTTP request whose
  request line carries the **path only** (``PATCH /calendar/v3/calendars/primary/events/x HTTP/1.1``),
  its own headers (its own ``Authorization``: each part may act for another user) and body. Google
  allows 1000 calls per batch; we send at most :data:`MAX_REQUESTS`. Each call counts against the
  quota as one request.
* the answer is ``multipart/mixed`` (a boundary of its own), one ``application/http`` part per call,
  ``Content-ID: <response-{the request's id}>``, holding the whole HTTP response (status line,
  headers, body): a 403 ``rateLimitExceeded`` or 409 for one call, 200s for the others.

Guarantees of :func:`parse_batch_answer`: it never raises, whatever the bytes; it returns exactly one
result per Content-ID asked: an :class:`connectors.wire.Answer` (any status) or a
:class:`connectors.exceptions.ConnectorError`. Parts are matched by Content-ID, never by position
(an answer in another order is read right); a part missing, unreadable or without a known Content-ID
leaves its call a :class:`RetryableError` (only that call is retried). Reading is bounded: at most
:data:`MAX_PARTS_READ` parts, :data:`MAX_HEADER_LINES` header lines per part, lines of
:data:`MAX_LINE` bytes, on a body already capped by the client.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from connectors.exceptions import ConnectorError, RetryableError
from connectors.wire import Answer, status_error

MAX_REQUESTS = 50
"""Calls we put in one batch (Google allows 1000; a smaller batch keeps one failure's blast small)."""
GOOGLE_MAX_REQUESTS = 1000
MAX_PARTS_READ = 2 * MAX_REQUESTS + 2
MAX_HEADER_LINES = 100
MAX_LINE = 8192
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,200})"|([^\s;"]{1,200}))', re.IGNORECASE)
_STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)? ([1-5]\d\d)(?: .*)?")


@dataclass(frozen=True, slots=True)
class SubRequest:
    """One call of a batch. ``path`` is the path and query only (``/calendar/v3/...?x=y``)."""

    content_id: str
    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None


def new_boundary() -> str:
    return f"batch_{uuid.uuid4().hex}"


def build_batch(requests: Sequence[SubRequest], boundary: str | None = None) -> tuple[str, bytes]:
    """(the Content-Type, the body) of one batch call. Raises ValueError for what Google refuses or
    this format cannot carry: no call, more than 1000, an empty or repeated Content-ID, a full URL
    instead of a path, a line break in a header, a body holding the boundary."""
    if not requests:
        raise ValueError("a batch needs at least one call")
    if len(requests) > GOOGLE_MAX_REQUESTS:
        raise ValueError(f"a batch holds at most {GOOGLE_MAX_REQUESTS} calls, got {len(requests)}")
    boundary = boundary or new_boundary()
    delimiter = f"--{boundary}".encode()
    seen: set[str] = set()
    out = bytearray()
    for request in requests:
        if not request.content_id or request.content_id in seen:
            raise ValueError(f"Content-IDs must be unique and non-empty, got {request.content_id!r}")
        seen.add(request.content_id)
        if request.method not in METHODS:
            raise ValueError(f"unknown method {request.method!r}")
        if not request.path.startswith("/") or request.path.startswith("//"):
            raise ValueError(f"a batched call carries a path, not a URL: {request.path!r}")
        for text in (request.content_id, request.path, *request.headers, *request.headers.values()):
            if any(c in text for c in "\r\n\x00"):
                raise ValueError("a line break or NUL in a batched call's request line or headers")
        body = request.body or b""
        if delimiter in body:
            raise ValueError("a batched call's body holds the boundary")
        out += delimiter + b"\r\n"
        out += b"Content-Type: application/http\r\n"
        out += b"Content-Transfer-Encoding: binary\r\n"
        out += f"Content-ID: <{request.content_id}>\r\n\r\n".encode()
        out += f"{request.method} {request.path} HTTP/1.1\r\n".encode()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        for name, value in headers.items():
            out += f"{name}: {value}\r\n".encode()
        if request.body is not None:
            if not any(k.lower() == "content-type" for k in headers):
                out += b"Content-Type: application/json\r\n"
            out += f"Content-Length: {len(body)}\r\n".encode()
        out += b"\r\n" + body + b"\r\n"
    out += delimiter + b"--\r\n"
    return f"multipart/mixed; boundary={boundary}", bytes(out)


def boundary_of(content_type: str) -> str | None:
    """The boundary of a ``multipart/mixed`` Content-Type, or None."""
    if not content_type.lower().lstrip().startswith("multipart/mixed"):
        return None
    match = _BOUNDARY.search(content_type)
    return (match.group(1) or match.group(2)) if match else None


def split_parts(body: bytes, boundary: str, limit: int = MAX_PARTS_READ) -> list[bytes]:
    """The parts of a multipart body (between ``--boundary`` lines, up to the closing one), at most
    ``limit`` of them; text before the first delimiter (the preamble) is dropped."""
    delimiter = b"--" + boundary.encode()
    pieces = body.split(delimiter, limit + 1)[1 : limit + 1]
    parts: list[bytes] = []
    for piece in pieces:
        if piece.startswith(b"--"):
            break  # the closing delimiter
        parts.append(piece.removeprefix(b"\r\n").removeprefix(b"\n").removesuffix(b"\n").removesuffix(b"\r"))
    return parts


def split_head(data: bytes) -> tuple[list[bytes], bytes] | None:
    """(header lines, body) of ``data``: lines up to the first empty one (CRLF or LF). None when the
    head has more than :data:`MAX_HEADER_LINES` lines, or a line longer than :data:`MAX_LINE`."""
    lines: list[bytes] = []
    position = 0
    while len(lines) <= MAX_HEADER_LINES:
        end = data.find(b"\n", position, position + MAX_LINE + 2)
        if end < 0:
            if len(data) - position > MAX_LINE:
                return None
            end = len(data)
        line = data[position:end].removesuffix(b"\r")
        position = end + 1
        if not line:
            return lines, data[position:]
        lines.append(line)
        if position >= len(data):
            return lines, b""
    return None


def read_headers(lines: Sequence[bytes]) -> list[tuple[str, str]]:
    """``Name: value`` lines as pairs (latin-1, as HTTP; lines without a colon are skipped)."""
    out: list[tuple[str, str]] = []
    for line in lines:
        name, colon, value = line.decode("latin-1").partition(":")
        if colon and name.strip():
            out.append((name.strip(), value.strip()))
    return out


def header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name.lower():
            return value
    return None


def batch_error(answer: Answer, detail: str) -> ConnectorError:
    """The error every call of a batch gets when Google refused the batch as a whole: backpressure
    for a 429 (or 403 rate limit), retryable otherwise (a refused envelope says nothing of the call)."""
    text = f"Google batch answered {answer.status_code}: {detail}".strip()
    throttled = answer.status_code == 403 and "rateLimitExceeded" in detail
    error = status_error(
        answer.status_code, text, retry_after=answer.headers.get("Retry-After"), throttled=throttled
    )
    return error if error.retryable else RetryableError(text, status_code=answer.status_code)


def parse_batch_answer(answer: Answer, content_ids: Sequence[str]) -> dict[str, Answer | ConnectorError]:
    """One result per Content-ID of ``content_ids`` (see the module docstring); never raises."""
    if answer.status_code != 200:
        return dict.fromkeys(content_ids, batch_error(answer, answer.text[:200]))
    missing = "Google's batch answer holds no readable response for this call"
    boundary = boundary_of(answer.headers.get("Content-Type", ""))
    if boundary is None:
        error = RetryableError(f"{missing}: the answer is not multipart/mixed")
        return dict.fromkeys(content_ids, error)
    wanted = set(content_ids)
    results: dict[str, Answer | ConnectorError] = {}
    for part in split_parts(answer.content, boundary):
        head = split_head(part)
        if head is None:
            continue
        content_id = header(read_headers(head[0]), "Content-ID") or ""
        key = content_id.strip().removeprefix("<").removesuffix(">").strip().removeprefix("response-")
        if key not in wanted or key in results:
            continue
        results[key] = _inner_answer(head[1]) or RetryableError(f"{missing} (unreadable response part)")
    for key in content_ids:
        results.setdefault(key, RetryableError(missing))
    return results


def _inner_answer(data: bytes) -> Answer | None:
    """The HTTP response held by one part (status line, headers, body), or None."""
    status_end = data.find(b"\n", 0, MAX_LINE)
    if status_end < 0:
        return None
    match = _STATUS_LINE.fullmatch(data[:status_end].removesuffix(b"\r").strip())
    if match is None:
        return None
    head = split_head(data[status_end + 1 :])
    if head is None:
        return None
    headers = read_headers(head[0])
    body = head[1]
    length = header(headers, "Content-Length")
    if length is not None and length.isdigit() and int(length) <= len(body):
        body = body[: int(length)]
    return Answer(int(match.group(1)), httpx.Headers(headers), body)
