"""``/api/v1/destinations/{id}/health`` (right ``configure``): a destination's health as the projection
keeps it (:mod:`projections.health`), whether absync disabled it for failing too long, when it would,
and its health history (failing, disabled, recovered) with the delivery of each alert
(:mod:`absync.health.monitor`). A tenant-limited token sees its tenant's destinations only (404).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from absync.health.monitor import AUTO_DISABLE_ACTOR
from absync.web.auth import Configurer
from absync.web.models import ERRORS, NOT_FOUND
from absync.web.routes.common import DestinationId, visible_destination
from absync.web.state import app_state
from projections.db import destination_health, health_events


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
    with state.engine.connect() as conn:
        row = (
            conn.execute(
                sa.select(destination_health).where(destination_health.c.destination_id == destination.id)
            )
            .mappings()
            .first()
        )
        events = (
            conn.execute(
                sa.select(health_events)
                .where(health_events.c.destination_id == destination.id)
                .order_by(health_events.c.at.desc(), health_events.c.id.desc())
                .limit(limit)
            )
            .mappings()
            .all()
        )
    health = dict(row) if row else {}
    failing_since = health.get("failing_since")
    state_name = "disabled" if not destination.enabled else "failing" if failing_since else "healthy"
    return {
        "state": state_name,
        "disabled_automatically": not destination.enabled and destination.updated_by == AUTO_DISABLE_ACTOR,
        "failing_since": failing_since,
        "disables_at": failing_since + dt.timedelta(seconds=after)
        if failing_since and destination.enabled and after > 0
        else None,
        "auto_disable_after_seconds": after,
        "last_success_at": health.get("last_success_at"),
        "last_failure_at": health.get("last_failure_at"),
        "last_error": health.get("last_error"),
        "successes": health.get("successes", 0),
        "failures": health.get("failures", 0),
        "events": [dict(e) for e in events],
    }
