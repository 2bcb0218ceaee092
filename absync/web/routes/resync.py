"""``/api/v1/destinations/{id}/resync``: send a destination what it should hold now (a replay of
absences, in a thread of this process; see :mod:`absync.web.resync_jobs`). Right ``configure``.

At most one resync per destination runs in a process: starting one while it runs returns its
progress; a disabled destination is refused (409). A started resync is recorded in the audit trail
(action ``resync``); asking for a running one's progress is not.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Request, status

from absync.web.auth import Configurer
from absync.web.models import BAD_BODY, CONFLICT, ERRORS, NOT_FOUND, ResyncIn, ResyncOut
from absync.web.resync_jobs import ResyncJob, resync_request
from absync.web.routes.common import DestinationId, visible_destination
from absync.web.state import app_state
from projections import queries

router = APIRouter(prefix="/destinations", tags=["destinations"], responses=ERRORS)


@router.post(
    "/{destination_id}/resync",
    response_model=ResyncOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={**BAD_BODY, **NOT_FOUND, **CONFLICT},
    summary="Send the destination what it should hold now (replay of absences, in the background)",
    description="Starts a resync unless one is running (then returns its progress). The body is "
    "optional: `ending_on_or_after` (every absence ending on or after that date), `legal_entity`, "
    "`department`, `changed_since` (time written to Kafka); none of them: everything.",
)
def start_resync(
    request: Request,
    principal: Configurer,
    destination_id: DestinationId,
    body: Annotated[ResyncIn, Body()] = ResyncIn(),  # noqa: B008 - a frozen default: everything
) -> ResyncOut:
    state = app_state(request)
    destination = visible_destination(state, principal, destination_id)
    if not destination.enabled:
        raise HTTPException(status.HTTP_409_CONFLICT, "the destination is disabled: enable it first")
    request_ = resync_request(body, destination_id)

    def audit(job: ResyncJob) -> None:
        queries.record_audit(
            state.engine,
            destination_id=destination.id,
            tenant=destination.tenant,
            actor=principal.name,
            action="resync",
            changes={k: v for k, v in job.request.parameters().items() if v is not None},
        )

    # A new job is audited; asking while one runs answers its progress, not audited.
    job, _ = state.resync_jobs.start(
        destination_id, lambda: ResyncJob(state.settings, request_, "operator"), before_start=audit
    )
    return job.out()


@router.get(
    "/{destination_id}/resync",
    response_model=ResyncOut,
    responses=NOT_FOUND,
    summary="Progress of the destination's latest resync in this API process (by hand or on enable)",
)
def resync_progress(request: Request, principal: Configurer, destination_id: DestinationId) -> ResyncOut:
    state = app_state(request)
    visible_destination(state, principal, destination_id)
    return state.resync_jobs.latest(destination_id, "resync").out()
