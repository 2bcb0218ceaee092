"""The live stream of deliveries (server-sent events): a thin subscriber of the process's change feed.

Events
    ``: connected`` (a comment) once the stream is subscribed: every change written from then on
    will be sent, so a page that loads its rows *after* this line misses nothing.
    ``deliveries``: a batch, ``{"items": [DeliveryOut, ...], "stats": {"counts": {...}, "total": n}}``,
    the latest state of each delivery that changed since the previous batch (oldest change first),
    and the counters (as ``/deliveries/stats``, same scope) when they moved. At most one batch per
    ``COALESCE_SECONDS``.
    ``resync``: the stream fell behind (more than the feed's ``max_pending`` deliveries waiting for
    it) or the view was rebuilt: reload, then reconnect. The stream ends.
    ``unauthorized``: the token was revoked or expired, or the console session ended. The stream ends.
    ``: keep-alive`` every ``KEEPALIVE_SECONDS`` without a batch.

A write that the client does not take within ``absync.web.limits.SEND_TIMEOUT_SECONDS`` ends the stream (and its
subscription): a client that stopped reading holds neither a queue nor the feed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from absync.web.auth import SESSION_HEADER, Principal, request_token_hash
from absync.web.feed import ChangeFeed, Closed, Subscriber, TooManyStreams
from absync.web.feed import Scope as FeedScope
from absync.web.limits import bounded_send
from absync.web.models import DeliveryOut
from projections import queries

if TYPE_CHECKING:
    from fastapi import FastAPI

log = structlog.get_logger(__name__)

COALESCE_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]


def _serialise(row: queries.DeliverySummary) -> str:
    return DeliveryOut.model_validate(row).model_dump_json()


def install_feed(app: FastAPI, **options: Any) -> ChangeFeed:
    """Makes the app's feed (``options``: :class:`ChangeFeed`'s limits) and its metrics:
    ``absync_live_streams`` (open now) and ``absync_live_resyncs_total`` (told to resync)."""
    settings = app.state.absync.settings
    options = {
        "max_per_token": settings.live_streams_per_token,
        "max_streams": settings.live_streams,
        **options,
    }
    feed = ChangeFeed(app.state.engine, _serialise, stopping=app.state.absync.stopping, **options)
    app.state.feed = feed
    app.state.absync.metrics.register(_FeedCollector(feed))
    return feed


def feed_of(app: FastAPI) -> ChangeFeed:
    """The process's feed (one per app), made on first use."""
    feed: ChangeFeed | None = getattr(app.state, "feed", None)
    return feed if feed is not None else install_feed(app)


class _FeedCollector(Collector):
    def __init__(self, feed: ChangeFeed) -> None:
        self.feed = feed

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "absync_live_streams", "Live streams open on this web process.", value=len(self.feed.subscribers)
        )
        yield CounterMetricFamily(
            "absync_live_resyncs",
            "Live streams told to resync (fell behind, or the view was rebuilt) since the process started.",
            value=self.feed.resyncs,
        )


class LiveStream(Response):
    """The ASGI response of ``GET /deliveries/stream`` (see the module for its events)."""

    media_type = None  # set in HEADERS; None keeps the documented errors JSON in the OpenAPI schema

    def __init__(self, request: Request, principal: Principal, destination: str | None = None) -> None:
        super().__init__()
        self.feed = feed_of(request.app)
        self.scope_ = FeedScope(principal.tenant, destination)
        self.token_hash = request_token_hash(request)
        self.session_key = request.headers.get(SESSION_HEADER)
        self.actor = principal.name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            subscriber = await self.feed.subscribe(self.scope_, self.token_hash, self.session_key)
        except TooManyStreams as exc:
            log.warning("live stream refused", actor=self.actor, reason=str(exc))
            refusal = JSONResponse(
                {"detail": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after)}
            )
            await refusal(scope, receive, send)
            return
        try:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            writer = asyncio.create_task(self._write(subscriber, send))
            listener = asyncio.create_task(_disconnected(receive))
            done, _ = await asyncio.wait({writer, listener}, return_when=asyncio.FIRST_COMPLETED)
            for task in (writer, listener):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if writer in done and writer.exception() is None and writer.result():
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.wait_for(
                        send({"type": "http.response.body", "body": b"", "more_body": False}), 5
                    )
        finally:
            self.feed.unsubscribe(subscriber)

    async def _write(self, subscriber: Subscriber, send: Send) -> bool:
        """Sends batches until the subscriber closes; True if the response may end cleanly."""

        bounded = bounded_send(send)

        async def out(text: str) -> None:
            await bounded({"type": "http.response.body", "body": text.encode(), "more_body": True})

        try:
            await out(": connected\n\n")
            while True:
                subscriber.wake.clear()
                if subscriber.closed is not None:
                    if subscriber.closed is Closed.RESYNC:
                        await out("event: resync\ndata: {}\n\n")
                    elif subscriber.closed is Closed.UNAUTHORIZED:
                        log.info("live stream closed: its token is no longer valid", actor=self.actor)
                        await out("event: unauthorized\ndata: {}\n\n")
                    return True
                batch = subscriber.take(self.feed.counts)
                if batch is not None:
                    await out(f"event: deliveries\ndata: {batch.json()}\n\n")
                    await asyncio.sleep(COALESCE_SECONDS)  # what changes meanwhile is coalesced
                    continue
                try:
                    await asyncio.wait_for(subscriber.wake.wait(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    await out(": keep-alive\n\n")
        except TimeoutError:
            log.warning("live stream dropped: the client took no data for a while", actor=self.actor)
            return False


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
