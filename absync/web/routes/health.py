"""``/api/v1/destinations/{id}/health`` (right ``configure``): a destination's health as the projection
keeps it (:mod:`projections.health`), whether absync disabled it for failing too long, when it would,
and its health history (failing, disabled, recovered) with the delivery of each alert
(:mod:`absync.health.monitor`). A tenant-limited token sees its tenant's destinations only (404).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from absync.health.monitor import AUTO_DISABLE_ACTOR
from absync.web.auth import Configurer
from absync.web.models import ERRORS, NOT_FOUND
from absync.web.routes.common import DestinationId, visible_destination
from absync.web.state import app_state
from projections import queries


class HealthEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    event: Literal["failing", "disabled", "recovered"]
    at: dt.datetime
    summary: str
    notify_status: Literal["pending", "sent", "failed", "none"] = Field(
        description="pending (will be tried again), sent, failed (gave up), none (no alert target set)."
    )
    notify_attempts: int
    notify_error: str | None


class DestinationHealthOut(BaseModel):
    state: Literal["healthy", "failing", "disabled"]
    disabled_automatically: bool = Field(description="Disabled by absync for failing too long.")
    failing_since: dt.datetime | None = Field(description="First failed attempt since the last success.")
    disables_at: dt.datetime | None = Field(
        description="When it will be disabled if no attempt succeeds before (failing and enabled only)."
    )
    auto_disable_after_seconds: float = Field(description="ABSYNC_AUTO_DISABLE_AFTER; 0: never.")
    last_success_at: dt.datetime | None
    last_failure_at: dt.datetime | None
    last_error: str | None
    successes: int = Field(description="Successful attempts, ever.")
    failures: int = Field(description="Failed attempts, ever.")
    events: list[HealthEventOut] = Field(description="Health history, newest first (at most 100).")


router = APIRouter(prefix="/destinations", tags=["destinations"], responses=ERRORS)


@router.get(
    "/{destination_id}/health",
    response_model=DestinationHealthOut,
    responses=NOT_FOUND,
    summary="A destination's health, auto-disable and health history",
)
def destination_health_view(
    request: Request,
    principal: Configurer,
    destination_id: DestinationId,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
) -> dict[str, Any]:
    state = app_state(request)
    destination = visible_destination(state, principal, destination_id)
    after = state.settings.auto_disable_after
    health = queries.attempt_health(state.engine, destination.id)
    events = queries.health_history(state.engine, destination.id, limit=limit)
    failing_since = health.failing_since
    state_name = "disabled" if not destination.enabled else "failing" if failing_since else "healthy"
    return {
        "state": state_name,
        "disabled_automatically": not destination.enabled and destination.updated_by == AUTO_DISABLE_ACTOR,
        "failing_since": failing_since,
        "disables_at": failing_since + dt.timedelta(seconds=after)
        if failing_since and destination.enabled and after > 0
        else None,
        "auto_disable_after_seconds": after,
        "last_success_at": health.last_success_at,
        "last_failure_at": health.last_failure_at,
        "last_error": health.last_error,
        "successes": health.successes,
        "failures": health.failures,
        "events": [asdict(e) for e in events],
    }
