"""A cap on request bodies, enforced before anything reads them (routing, authentication, parsing).

:class:`BodyLimit` is pure ASGI middleware, outermost in the application:

- a request whose ``Content-Length`` is over the cap (or not a number) is answered ``413`` at once;
  its body is never read;
- a body without ``Content-Length`` (chunked transfer), or longer than it said, is counted while
  the application receives it: the chunk that crosses the cap is not passed on, the client gets
  ``413`` at once (and the connection is closed), and the application sees a disconnect; anything
  it answers after that is dropped. (If it had already started its answer, it only sees the
  disconnect.)

Guarantees: no request makes the process hold more than ``max_request_bytes`` of its body (plus one
chunk of the server's read buffer), whoever sends it, signed in or not. The 413 body is a
``{"detail": ...}`` like every other API error (:func:`send_error`, which the other middleware
refusing a request before any route, :class:`absync.web.inputs.NoControlCharacters`, answers with too).

:func:`bounded_send` is the other side's bound: a streamed response (the CSV export, the live
stream) whose client stops taking data is cut after ``SEND_TIMEOUT_SECONDS`` per write.
"""

from __future__ import annotations

import asyncio
import json

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger(__name__)

SEND_TIMEOUT_SECONDS = 30.0
"""Seconds a client has to take one write of a streamed response before the stream is cut."""


def bounded_send(send: Send, timeout: float = SEND_TIMEOUT_SECONDS) -> Send:
    """``send`` with a bound: a write the client does not take within ``timeout`` seconds raises
    :class:`TimeoutError`, for the caller to cut the stream and free what it holds."""

    async def bounded(message: Message) -> None:
        await asyncio.wait_for(send(message), timeout)

    return bounded


class BodyLimit:
    """ASGI middleware: 413 for any HTTP request body over ``max_bytes`` (see the module doc)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The console bridge re-enters the app with the same (already limited) receive: the inner
        # pass counts the same bytes against the same cap, so the answer does not change.
        declared = _content_length(scope)
        if declared is not None and (declared < 0 or declared > self.max_bytes):
            await self._refuse(scope, send, declared)
            return

        received = 0
        started = False
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not started:
                        await self._refuse(scope, send, None)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused and not started:
                return  # the 413 is the answer: whatever the application says after it is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise
            log.debug("application error after a refused body", exc_info=True)

    async def _refuse(self, scope: Scope, send: Send, declared: int | None) -> None:
        log.info(
            "request body refused",
            path=scope.get("path"),
            content_length=declared,
            limit=self.max_bytes,
        )
        detail = f"request body larger than {self.max_bytes} bytes (ABSYNC_MAX_REQUEST_BYTES)"
        await send_error(send, 413, detail, close=True)


async def send_error(send: Send, status: int, detail: object, *, close: bool = False) -> None:
    """Answers ``{"detail": detail}`` with ``status`` straight from ASGI middleware, before any route
    (the shape of every other API error); ``close``: the connection is closed after it."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    """The declared length; -1 if the header is not a plain decimal number (refused too)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() and len(text) <= 18 else -1
    return None
