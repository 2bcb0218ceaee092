"""``/api/v1/deliveries/stream``: live changes of deliveries as server-sent events.

Self-contained on purpose (its internals are to be reworked on their own): this module only needs
the view's reads :func:`projections.queries.changes_since` / :func:`~projections.queries.latest_update`,
the ``DeliveryOut`` model and the app state.

Guarantees: one ``delivery`` event (a ``DeliveryOut`` as JSON, ``id:`` the delivery id) per change
of a delivery the token may see that reaches the view after the connection, including a change that
lands up to :data:`STREAM_LOOKBACK` "in the past" (processors' clocks); what the view holds at
connection time is not sent. A comment line at least every :data:`STREAM_KEEPALIVE_SECONDS`. The
token is checked again every :data:`STREAM_RECHECK_SECONDS`: revoked or expired, the stream sends
``event: unauthorized`` and ends. It also ends when the server stops or the client goes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator

import structlog
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from absync.web.auth import Principal, Viewer, still_authenticated
from absync.web.models import ERRORS, DeliveryOut
from absync.web.state import AppState, app_state
from projections import queries

log = structlog.get_logger(__name__)

STREAM_POLL_SECONDS = 0.5
STREAM_LOOKBACK = dt.timedelta(seconds=10)
"""``updated_at`` comes from the processors' clocks, so a change may land in the view slightly
"in the past"; the stream re-reads this window and sends what it has not sent yet."""
STREAM_KEEPALIVE_SECONDS = 15.0
STREAM_RECHECK_SECONDS = 2.0
"""An open stream checks its token again this often: revoked or expired, the stream ends."""

router = APIRouter(prefix="/deliveries", tags=["deliveries"], responses=ERRORS)


def _changes(state: AppState, tenant: str | None, watermark: dt.datetime) -> list[queries.DeliverySummary]:
    return queries.changes_since(state.engine, watermark, tenant=tenant, lookback=STREAM_LOOKBACK)


def _latest_update(state: AppState, tenant: str | None) -> dt.datetime:
    return queries.latest_update(state.engine, tenant=tenant)


async def _change_events(request: Request, state: AppState, principal: Principal) -> AsyncIterator[str]:
    """Server-sent events: one ``delivery`` event (a DeliveryOut as JSON) per changed delivery.
    Ends when the token is revoked or expires (checked every ``STREAM_RECHECK_SECONDS``)."""
    watermark = await run_in_threadpool(_latest_update, state, principal.tenant)
    # What the view holds at connection time counts as sent: the stream carries changes only.
    known = await run_in_threadpool(_changes, state, principal.tenant, watermark)
    sent = {row.delivery_id: row.updated_at for row in known}
    last_output = checked = time.monotonic()
    yield ": connected\n\n"
    while not state.stopping.is_set() and not await request.is_disconnected():
        if time.monotonic() - checked >= STREAM_RECHECK_SECONDS:
            if not await run_in_threadpool(still_authenticated, request):
                log.info("live stream closed: its token is no longer valid", actor=principal.name)
                yield "event: unauthorized\ndata: {}\n\n"
                return
            checked = time.monotonic()
        rows = await run_in_threadpool(_changes, state, principal.tenant, watermark)
        for row in rows:
            if sent.get(row.delivery_id) == row.updated_at:
                continue
            sent[row.delivery_id] = row.updated_at
            watermark = max(watermark, row.updated_at)
            data = DeliveryOut.model_validate(row).model_dump_json()
            yield f"event: delivery\nid: {row.delivery_id}\ndata: {data}\n\n"
            last_output = time.monotonic()
        horizon = watermark - STREAM_LOOKBACK
        sent = {k: v for k, v in sent.items() if v > horizon}
        if time.monotonic() - last_output > STREAM_KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_output = time.monotonic()
        await asyncio.sleep(STREAM_POLL_SECONDS)


@router.get(
    "/stream",
    summary="Live changes (server-sent events)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "`event: delivery`, data = a delivery."}
    },
)
def stream_deliveries(request: Request, principal: Viewer) -> StreamingResponse:
    return StreamingResponse(
        _change_events(request, app_state(request), principal),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
