"""``/api/v1/deliveries/bulk``: Retry all / Mark all as processed on the deliveries the follow-up
list's filters select, as a tracked job (see :mod:`absync.services.bulk` for the guarantees and
:mod:`absync.web.bulk_jobs` for the job).

The filters are the list's own query parameters (:func:`absync.web.routes.deliveries.delivery_filter`,
the list's and the CSV export's), scoped to the token's tenant like the list. Right ``view``, as
the single Retry and Mark as processed. The flow: ``GET .../bulk/count`` (the count to confirm);
``POST .../bulk/retry`` (or ``.../bulk/mark-processed``) with the same filters and ``expected``,
the count confirmed (409 if the filters select another number now); then ``GET
.../bulk?job_id=`` for its progress and result. Refused: more than 10,000 deliveries selected, or
none (422); :data:`absync.web.bulk_jobs.RUNNING_AT_MOST` bulk actions of the same tenant scope
running (409). Each started job is recorded once in the audit trail (action ``bulk-retry`` or
``bulk-mark-processed``, the filters and the count), before it starts.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status

from absync.services import bulk
from absync.services.bulk import MAX_DELIVERIES, BulkAction
from absync.web.auth import Principal, Viewer
from absync.web.bulk_jobs import RUNNING_AT_MOST, BulkJob, scope_key
from absync.web.models import CONFLICT, ERRORS, NOT_FOUND, BulkCountOut, BulkOut
from absync.web.routes.common import invalid
from absync.web.routes.deliveries import Filter
from absync.web.state import app_state
from projections import queries
from schemas.delivery import Status

router = APIRouter(prefix="/deliveries/bulk", tags=["deliveries"], responses=ERRORS)


@router.get(
    "/count",
    response_model=BulkCountOut,
    summary="How many deliveries the filters select, for a bulk action's confirmation",
    description=f"The list's filters and tenant scope; counted up to {MAX_DELIVERIES + 1:,}.",
)
def bulk_count(request: Request, principal: Viewer, where: Filter) -> BulkCountOut:
    seen = bulk.preview(app_state(request).engine, tenant=principal.tenant, where=where)
    return BulkCountOut(
        matching=seen.matching,
        limit=bulk.MAX_DELIVERIES,
        over_limit=seen.over_limit,
        by_status={Status(s): n for s, n in seen.by_status.items() if s in Status.__members__},
        actionable={action.value: seen.actionable(action) for action in BulkAction},
        destinations=len(seen.destinations),
    )


Expected = Annotated[
    int | None,
    Query(ge=0, le=MAX_DELIVERIES, description="The count the operator confirmed (GET .../count)."),
]
START_DESCRIPTION = (
    f"The list's filters as query parameters. 422 when more than {MAX_DELIVERIES:,} deliveries "
    f"match (narrow the filters) or none; 409 while {RUNNING_AT_MOST} bulk actions of this tenant "
    "scope run, or when `expected` is not the number the filters select now."
)


@router.post(
    "/retry",
    response_model=BulkOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={**CONFLICT},
    summary="Retry all: send again the deliveries the filters select (in the background)",
    description=START_DESCRIPTION,
)
def retry_all(request: Request, principal: Viewer, where: Filter, expected: Expected = None) -> BulkOut:
    return _start(request, principal, BulkAction.RETRY, where, expected)


@router.post(
    "/mark-processed",
    response_model=BulkOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={**CONFLICT},
    summary="Mark all as processed: the deliveries the filters select (in the background)",
    description=START_DESCRIPTION,
)
def mark_all_processed(
    request: Request, principal: Viewer, where: Filter, expected: Expected = None
) -> BulkOut:
    return _start(request, principal, BulkAction.MARK_PROCESSED, where, expected)


def _start(
    request: Request,
    principal: Principal,
    action: BulkAction,
    where: queries.DeliveryFilter,
    expected: int | None,
) -> BulkOut:
    state = app_state(request)
    try:
        refs = bulk.select(state.engine, tenant=principal.tenant, where=where)
    except bulk.TooManyError as exc:
        raise invalid(("query", "filters"), str(exc)) from exc
    if not refs:
        raise invalid(("query", "filters"), "no delivery matches these filters")
    if expected is not None and expected != len(refs):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"the filters now select {len(refs):,} deliveries, not {expected:,}: confirm the new count",
        )

    def busy(running: BulkJob) -> str:
        current = running.out()
        return (
            f"{RUNNING_AT_MOST} bulk actions of this tenant scope are running (the latest started by "
            f"{current.started_by}: {current.action}, {current.done:,} of {current.total:,} sent): "
            "wait until one is done"
        )

    def audit(job: BulkJob) -> None:
        bulk.audit(
            state.engine, action=action, job_id=job.job_id, actor=principal.name, where=where, refs=refs
        )

    job = state.bulk_jobs.start_or_refuse(
        scope_key(principal.tenant),
        lambda: BulkJob(
            state.settings,
            state.engine,
            action,
            where,
            refs,
            tenant=principal.tenant,
            started_by=principal.name,
        ),
        busy,
        before_start=audit,
    )
    return job.out()


@router.get(
    "",
    response_model=BulkOut,
    responses=NOT_FOUND,
    summary="Progress and result of a bulk action of this token's tenant scope (the latest by default)",
)
def bulk_progress(
    request: Request,
    principal: Viewer,
    job_id: Annotated[
        str | None, Query(max_length=64, description="The job's id (as started); none: the latest.")
    ] = None,
) -> BulkOut:
    jobs = app_state(request).bulk_jobs
    return jobs.latest(scope_key(principal.tenant), "bulk action", job_id).out()
