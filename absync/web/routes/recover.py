"""``/api/v1/destinations/{id}/recover``: re-send the destination's deliveries in Error since a
time, as a tracked job (a thread of this process; see :mod:`absync.web.recover_jobs` and
:mod:`absync.services.recover`). The API form of ``absync replay-failed``.

Right ``configure``, as a resync: one Recover re-sends up to
:data:`absync.services.recover.MAX_DELIVERIES` deliveries at once, a bulk action on a
destination, whereas the ``view`` right retries one delivery it is looking at. At most one Recover
per destination runs at a time: starting another one while it runs is refused (409), as is a
Recover of a disabled destination. Each start is audited (who, destination, since).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status

from absync.services import recover as recovery
from absync.web.auth import Configurer
from absync.web.models import BAD_BODY, CONFLICT, ERRORS, NOT_FOUND, RecoverIn, RecoverOut
from absync.web.recover_jobs import RecoverJob
from absync.web.routes.common import DestinationId, visible_destination
from absync.web.state import app_state

router = APIRouter(prefix="/destinations", tags=["destinations"], responses=ERRORS)


@router.post(
    "/{destination_id}/recover",
    response_model=RecoverOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={**BAD_BODY, **NOT_FOUND, **CONFLICT},
    summary="Re-send the destination's deliveries in Error since a time (in the background)",
    description="Starts a Recover; 409 while one of this destination runs, or if it is disabled.",
)
def start_recover(
    request: Request, principal: Configurer, destination_id: DestinationId, body: RecoverIn
) -> RecoverOut:
    state = app_state(request)
    destination = visible_destination(state, principal, destination_id)
    if not destination.enabled:
        raise HTTPException(status.HTTP_409_CONFLICT, "the destination is disabled: enable it first")

    def busy(running: RecoverJob) -> str:
        current = running.out()
        return (
            f"a Recover of this destination is running (started by {current.started_by}, "
            f"{current.done} of {current.total} re-sent): wait until it is done"
        )

    def audit(_: RecoverJob) -> None:
        recovery.audit(
            state.engine,
            destination_id=destination_id,
            tenant=destination.tenant,
            actor=principal.name,
            since=body.since,
        )

    job = state.recover_jobs.start_or_refuse(
        destination_id,
        lambda: RecoverJob(state.settings, state.engine, destination_id, body.since, principal.name),
        busy,
        before_start=audit,
    )
    return job.out()


@router.get(
    "/{destination_id}/recover",
    response_model=RecoverOut,
    responses=NOT_FOUND,
    summary="Progress and result of the destination's latest Recover started by this API process",
)
def recover_progress(request: Request, principal: Configurer, destination_id: DestinationId) -> RecoverOut:
    state = app_state(request)
    visible_destination(state, principal, destination_id)
    return state.recover_jobs.latest(destination_id, "recover").out()
