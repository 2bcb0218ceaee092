"""``/api/v1/deliveries``: the list (filtered, keyset-paginated), the counts per status, the CSV
export of the filtered list, and one delivery with its attempts. Read-only, from the SQL view; right ``view``. Retry and Mark as
processed are in :mod:`absync.web.routes.commands`, the live stream in
:mod:`absync.web.routes.stream`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from absync.web.auth import Viewer, request_token_hash
from absync.web.export import MAX_EXPORT_ROWS, ExportResponse, ExportSlots, csv_lines
from absync.web.models import ERRORS, NOT_FOUND, DeliveryDetailOut, DeliveryPage, DeliveryStats, Problem
from absync.web.routes.common import DeliveryId, IsoDate, invalid, visible_delivery
from absync.web.state import app_state
from projections import queries
from projections.exceptions import BadCursorError
from schemas.delivery import Status

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/deliveries", tags=["deliveries"], responses=ERRORS)


Trigger = Literal["automatic", "retry", "replay", "manual"]


def delivery_filter(
    status_: Annotated[Status | None, Query(alias="status")] = None,
    destination: Annotated[str | None, Query(description="Destination id.", max_length=200)] = None,
    employee: Annotated[
        str | None, Query(description="Part of the employee's name or email.", max_length=200)
    ] = None,
    absence: Annotated[str | None, Query(description="Absence id.", max_length=200)] = None,
    date_from: Annotated[IsoDate | None, Query(description="Absences ending on or after.")] = None,
    date_to: Annotated[IsoDate | None, Query(description="Absences starting on or before.")] = None,
    tenant: Annotated[
        str | None, Query(description="Only this tenant (within the token's own).", max_length=200)
    ] = None,
    trigger: Annotated[
        Trigger | None,
        Query(description="What caused the shown status; `manual`: marked as processed by hand."),
    ] = None,
    kind: Annotated[str | None, Query(description="The destination's kind.", max_length=50)] = None,
    legal_entity: Annotated[
        str | None, Query(description="The employee's legal entity id.", max_length=200)
    ] = None,
    department: Annotated[
        str | None, Query(description="The employee's department id.", max_length=200)
    ] = None,
) -> queries.DeliveryFilter:
    """The list's filters, shared by the list and its CSV export (so both select the same rows)."""
    return queries.DeliveryFilter(
        status=status_.value if status_ else None,
        destination_id=destination,
        employee=employee,
        absence_id=absence,
        date_from=date_from,
        date_to=date_to,
        tenant=tenant,
        trigger=trigger,
        kind=kind,
        legal_entity_id=legal_entity,
        department_id=department,
    )


Filter = Annotated[queries.DeliveryFilter, Depends(delivery_filter)]


@router.get("", response_model=DeliveryPage, summary="List deliveries, newest change first")
def list_deliveries(
    request: Request,
    principal: Viewer,
    where: Filter,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_LIMIT)] = 50,
) -> queries.Page:
    try:
        return queries.list_deliveries(
            app_state(request).engine, tenant=principal.tenant, where=where, cursor=cursor, limit=limit
        )
    except BadCursorError as exc:
        raise invalid(("query", "cursor"), "not a cursor from this API: pass next_cursor back as is") from exc


@router.get(
    "/export.csv",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/csv": {}}, "description": "The filtered list as CSV."},
        429: {
            "model": Problem,
            "description": "Too many exports streaming (ABSYNC_EXPORTS_PER_TOKEN, ABSYNC_EXPORTS).",
        },
    },
    summary="Export the filtered list as CSV (newest change first)",
    description=f"The same filters and tenant scope as the list. At most {MAX_EXPORT_ROWS:,} rows: when "
    "more match, the last line says the export was cut. Cells that a spreadsheet would read as a "
    "formula are prefixed with `'`.",
)
def export_deliveries(
    request: Request,
    principal: Viewer,
    where: Filter,
    limit: Annotated[
        int, Query(ge=1, le=MAX_EXPORT_ROWS, description="Rows at most (then a note says it was cut).")
    ] = MAX_EXPORT_ROWS,
) -> StreamingResponse:
    engine = app_state(request).engine
    slots: ExportSlots = request.app.state.exports
    token_hash = request_token_hash(request)
    refused = slots.take(token_hash)
    if refused is not None:
        raise HTTPException(429, refused, headers={"Retry-After": "10"})
    try:
        rows = queries.export_deliveries(engine, tenant=principal.tenant, where=where, max_rows=limit)
    except BaseException:
        slots.release(token_hash)
        raise
    log.info("deliveries exported", actor=principal.name, tenant=principal.tenant, limit=limit)
    return ExportResponse(
        slots.streaming(csv_lines(rows, limit), token_hash),
        slots.send_timeout,
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": 'attachment; filename="deliveries.csv"',
            "Cache-Control": "no-store",
        },
    )


@router.get("/stats", response_model=DeliveryStats, summary="Number of deliveries per status")
def delivery_stats(
    request: Request,
    principal: Viewer,
    destination: Annotated[str | None, Query(description="Only this destination.", max_length=200)] = None,
) -> DeliveryStats:
    counts = queries.count_by_status(
        app_state(request).engine, tenant=principal.tenant, destination_id=destination
    )
    full = {s: counts.get(s.value, 0) for s in Status}
    return DeliveryStats(counts=full, total=sum(full.values()))


@router.get(
    "/{delivery_id}",
    response_model=DeliveryDetailOut,
    responses=NOT_FOUND,
    summary="One delivery with its attempts",
)
def get_delivery(request: Request, principal: Viewer, delivery_id: DeliveryId) -> dict[str, Any]:
    detail = visible_delivery(app_state(request), principal, delivery_id)
    return {**asdict(detail.delivery), "attempts": [asdict(a) for a in detail.attempts]}
