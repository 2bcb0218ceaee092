"""``/api/v1/audit``: the audit log of every destination the token sees, newest first. Right
``configure``.

It lists who created, changed, enabled, disabled or resynced a destination (written by the
destination-write service and the resync route) and who retried or marked a delivery as processed
(written by :mod:`absync.web.routes.commands` once Kafka acknowledged the command), in one table,
``destination_audit``. A tenant-limited token sees its tenant's rows only. Paged by ``before``
(the ``next_cursor`` of the previous page).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from absync.web.auth import Configurer
from absync.web.models import ERRORS, AuditPageOut
from absync.web.state import app_state
from projections import queries

MAX_AUDIT_ID = 2**31 - 1
"""The audit id is a 32-bit integer column: a larger ``before`` is refused (422), not sent to SQL."""

router = APIRouter(prefix="/audit", tags=["audit"], responses=ERRORS)


@router.get("", response_model=AuditPageOut, summary="Who did what to which destination (newest first)")
def audit_log(
    request: Request,
    principal: Configurer,
    destination: Annotated[str | None, Query(description="Destination id.", max_length=200)] = None,
    actor: Annotated[
        str | None, Query(description="Part of the operator's (token's) name.", max_length=200)
    ] = None,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_AUDIT_ID, description="`next_cursor` of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_AUDIT_LIMIT)] = 50,
) -> queries.AuditPage:
    return queries.audit_log(
        app_state(request).engine,
        tenant=principal.tenant,
        destination_id=destination,
        actor=actor,
        before=before,
        limit=limit,
    )
