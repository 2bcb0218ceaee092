"""``POST /api/v1/erasures``: erase one employee's personal data (the configure right; see
:mod:`absync.erasure` and docs/privacy.md). A token limited to a tenant erases that tenant's data
only. The answer names the subject id the audit trail records, never the email."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import structlog
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from absync.erasure import EMAIL_MAX, ErasureRequestError, erase_employee
from absync.web.auth import Configurer
from absync.web.state import app_state
from processors.erasure import ErasureError

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/erasures", tags=["privacy"])


class ErasureIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {"employee_email": "leaver@example.com"}}
    )

    employee_email: str = Field(
        min_length=3, max_length=EMAIL_MAX, description="The employee's email address."
    )


class ErasureOut(BaseModel):
    subject: str = Field(description="The opaque id the audit trail records (a keyed hash, not the email).")
    absences: int = Field(description="Absences of the employee found in the absences topic.")
    deliveries: int = Field(description="Deliveries of the employee removed from the view.")
    tombstones: int = Field(description="Tombstones written to the compacted topics.")
    destinations: list[str] = Field(description="Destinations whose audit trail records the erasure.")


RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "The body is not JSON."},
    401: {"description": "No valid API token."},
    403: {"description": "The token lacks the configure right."},
    422: {"description": "Not an email address."},
    503: {"description": "Kafka or the database did not complete it: send it again (idempotent)."},
}


@router.post(
    "",
    response_model=ErasureOut,
    responses=RESPONSES,
    summary="Erase an employee's personal data from the view and the compacted topics",
    description="Records the erasure in the audit trail by an opaque subject id. See docs/privacy.md "
    "for what is erased where, and what ages out by retention instead.",
)
async def erase(request: Request, principal: Configurer, body: ErasureIn) -> ErasureOut:
    state = app_state(request)
    try:
        erasure = await run_in_threadpool(
            erase_employee,
            state.settings,
            state.engine,
            state.destinations,
            body.employee_email,
            actor=principal.name,
            tenant=principal.tenant,
        )
    except ErasureRequestError as exc:
        raise HTTPException(422, str(exc)) from None
    except (ErasureError, sa.exc.SQLAlchemyError) as exc:
        log.error("erasure not complete", error_type=type(exc).__name__, actor=principal.name)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the erasure did not complete: send it again"
        ) from None
    return ErasureOut(
        subject=erasure.subject,
        absences=erasure.absences,
        deliveries=erasure.deliveries,
        tombstones=erasure.tombstones,
        destinations=erasure.destinations,
    )
