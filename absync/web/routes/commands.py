"""``/api/v1/deliveries/{id}/retry`` and ``.../mark-processed``: operators' commands on a delivery.

A command is produced to the commands topic (the delivery processor acts on it); the view is never
written here. Guarantees: 202 only once Kafka has acknowledged the command (else 503, nothing
promised); 409 when the delivery's status makes the command meaningless
(:data:`absync.services.commands.REFUSED`, the bulk actions' rule too); 404 for
another tenant's delivery. Right ``view``: viewers may retry and mark as processed. Each accepted
command is recorded in the destination audit trail (action ``retry`` or ``mark-processed``, the
token's name as actor, the delivery in ``changes``) after Kafka acknowledged it.
"""

from __future__ import annotations

import datetime as dt
import uuid

import structlog
from fastapi import APIRouter, HTTPException, Request, status

from absync.services.commands import refusal
from absync.web.auth import Principal, Viewer
from absync.web.models import CONFLICT, ERRORS, NOT_FOUND, UNAVAILABLE, CommandAccepted
from absync.web.routes.common import DeliveryId, visible_delivery
from absync.web.state import AppState, app_state
from projections import queries
from schemas.codec import codec_for
from schemas.delivery import Command, CommandKind
from streams.topics import Topics

log = structlog.get_logger(__name__)

COMMAND_ACK_TIMEOUT = 10.0
"""Seconds a command waits for Kafka's acknowledgement (then 503)."""

AUDIT_ACTIONS = {CommandKind.RETRY: "retry", CommandKind.MARK_PROCESSED: "mark-processed"}
"""The action an accepted command is recorded under in the destination's audit trail."""

router = APIRouter(prefix="/deliveries", tags=["deliveries"], responses=ERRORS)


def _issue_command(
    state: AppState, principal: Principal, delivery_id: str, kind: CommandKind
) -> CommandAccepted:
    delivery = visible_delivery(state, principal, delivery_id).delivery
    reason = refusal(kind, delivery.status)
    if reason is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, reason)
    command = Command(
        command_id=f"cmd_{uuid.uuid4().hex}",
        kind=kind,
        delivery_id=delivery.delivery_id,
        destination_id=delivery.destination_id,
        absence_id=delivery.absence_id,
        tenant=delivery.tenant,
        issued_by=principal.name,
        issued_at=dt.datetime.now(dt.UTC),
    )
    with state.producer_lock:
        state.producer.produce(
            Topics(state.settings).commands,
            key=command.key.encode(),
            value=codec_for("Command").encode(command.to_avro()),
        )
        unacknowledged = state.producer.flush(COMMAND_ACK_TIMEOUT)
    if unacknowledged:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "Kafka did not acknowledge the command: try again"
        )
    log.info("command issued", kind=kind.value, delivery=delivery.delivery_id, actor=principal.name)
    queries.record_audit(  # after the acknowledgement: only a command Kafka holds is recorded
        state.engine,
        destination_id=delivery.destination_id,
        tenant=delivery.tenant,
        actor=principal.name,
        action=AUDIT_ACTIONS[kind],
        changes={
            "delivery_id": delivery.delivery_id,
            "absence_id": delivery.absence_id,
            "employee": delivery.employee_name,
            "status": delivery.status,
        },
    )
    return CommandAccepted(command_id=command.command_id, kind=kind, delivery_id=delivery.delivery_id)


@router.post(
    "/{delivery_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CommandAccepted,
    responses={**NOT_FOUND, **CONFLICT, **UNAVAILABLE},
    summary="Send again now (one attempt, no automatic retry after it)",
    description="409 if the delivery is Superseded.",
)
def retry_delivery(request: Request, principal: Viewer, delivery_id: DeliveryId) -> CommandAccepted:
    return _issue_command(app_state(request), principal, delivery_id, CommandKind.RETRY)


@router.post(
    "/{delivery_id}/mark-processed",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CommandAccepted,
    responses={**NOT_FOUND, **CONFLICT, **UNAVAILABLE},
    summary="Mark as processed (handled by hand; no more attempts)",
    description="409 if the delivery is Successful or Superseded.",
)
def mark_processed(request: Request, principal: Viewer, delivery_id: DeliveryId) -> CommandAccepted:
    return _issue_command(app_state(request), principal, delivery_id, CommandKind.MARK_PROCESSED)
