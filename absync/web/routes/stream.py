"""``/api/v1/deliveries/stream``: live changes of deliveries as server-sent events.

A thin subscriber of the process's change feed: the events, their guarantees and bounds are those
of :mod:`absync.web.live` (the stream) and :mod:`absync.web.feed` (one feed per process: the view
read once, each change serialised once, tenant scoping, coalescing, resync, token rechecks).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from absync.web.auth import Viewer
from absync.web.live import LiveStream
from absync.web.models import ERRORS, Problem

router = APIRouter(prefix="/deliveries", tags=["deliveries"], responses=ERRORS)


@router.get(
    "/stream",
    summary="Live changes (server-sent events), coalesced: see absync.web.live",
    response_class=LiveStream,
    status_code=200,  # LiveStream takes no status_code argument for FastAPI to read it from
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`event: deliveries`, data = {items: [delivery...], stats?}; "
            "`event: resync`: reload; `event: unauthorized`: token gone.",
        },
        429: {
            "model": Problem,
            "description": "Too many live streams open with this token (16) or in the process (500); "
            "see Retry-After.",
        },
    },
)
def stream_deliveries(
    request: Request,
    principal: Viewer,
    destination: Annotated[str | None, Query(description="Only this destination.", max_length=200)] = None,
) -> LiveStream:
    return LiveStream(request, principal, destination)
