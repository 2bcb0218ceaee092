"""Destination health and operator alerts in the API (``/api/v1``).

- ``GET /destinations/{id}/health`` (configure): the destination's health as the projection keeps it
  (:mod:`projections.health`), whether it was disabled automatically, when it would be, and its health
  history (failing, disabled, recovered) with the delivery of each alert.
- ``GET`` / ``PUT /alerts`` (configure, a token for every tenant): where alerts go (Slack channel and
  bot token, webhook URL and ``whsec_`` secret). Secrets are write-only: the answer says only whether
  each is set; a secret left out of a ``PUT`` is kept unless its address changes
  (:mod:`absync.health.alerts`).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Annotated, Any, Literal

import sqlalchemy as sa
import structlog
from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from absync.health import alerts
from absync.health.monitor import AUTO_DISABLE_ACTOR
from absync.web.api import BAD_BODY, ERRORS, NOT_FOUND
from absync.web.auth import Configurer, Principal
from projections.db import destination_health, health_events
from schemas.destination import Destination

if TYPE_CHECKING:
    from absync.web.app import AppState

log = structlog.get_logger(__name__)

DestinationId = Annotated[str, Path(description="Destination id.", max_length=200)]


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


class AlertSettingsOut(BaseModel):
    slack_channel: str | None
    slack_base_url: str | None = Field(description="Slack Web API base; null: https://slack.com/api/.")
    slack_token_set: bool = Field(description="Whether a bot token is stored (never returned).")
    webhook_url: str | None
    webhook_secret_set: bool = Field(description="Whether a signing secret is stored (never returned).")
    updated_by: str | None
    updated_at: dt.datetime | None


class AlertSettingsIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "slack_channel": "C0123ALERTS",
                "slack_token": "xoxb-your-bot-token",
                "webhook_url": "https://hooks.example.com/absync-alerts",
                "webhook_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            }
        },
    )

    slack_channel: str | None = Field(default=None, max_length=200, description="Channel id (C...) or name.")
    slack_base_url: str | None = Field(default=None, max_length=2000)
    slack_token: str | None = Field(
        default=None, max_length=500, description="Bot token (xoxb-...): write-only; left out: kept."
    )
    webhook_url: str | None = Field(default=None, max_length=2000)
    webhook_secret: str | None = Field(
        default=None, max_length=2000, description="whsec_... signing secret: write-only; left out: kept."
    )


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.absync
    return state


def _visible(state: AppState, principal: Principal, destination_id: str) -> Destination:
    destination = state.destinations.get(destination_id)
    if destination is None or not principal.sees(destination.tenant):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such destination")
    return destination


def _all_tenants(principal: Principal) -> None:
    if principal.tenant is not None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "alert settings cover every tenant: a token for every tenant is needed"
        )


health_router = APIRouter(prefix="/api/v1", responses=ERRORS)


@health_router.get(
    "/destinations/{destination_id}/health",
    response_model=DestinationHealthOut,
    tags=["destinations"],
    responses=NOT_FOUND,
    summary="A destination's health, auto-disable and health history",
)
def destination_health_view(
    request: Request,
    principal: Configurer,
    destination_id: DestinationId,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
) -> dict[str, Any]:
    state = _state(request)
    destination = _visible(state, principal, destination_id)
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


@health_router.get(
    "/alerts",
    response_model=AlertSettingsOut,
    tags=["alerts"],
    summary="Where operator alerts go (secrets: only whether set)",
    description="403 with a token limited to a tenant.",
)
def get_alerts(request: Request, principal: Configurer) -> dict[str, Any]:
    _all_tenants(principal)
    state = _state(request)
    return alerts.load(state.engine, state.box).public()


@health_router.put(
    "/alerts",
    response_model=AlertSettingsOut,
    tags=["alerts"],
    responses=BAD_BODY,
    summary="Set where operator alerts go (Slack channel and/or signed webhook)",
    description="A secret left out (or empty) is kept, unless its address changes: then it must be "
    "entered again. Secrets are never returned. 403 with a token limited to a tenant.",
)
def put_alerts(request: Request, principal: Configurer, body: AlertSettingsIn) -> dict[str, Any]:
    _all_tenants(principal)
    state = _state(request)
    try:
        saved = alerts.save(state.engine, state.box, actor=principal.name, **body.model_dump())
    except alerts.AlertSettingsError as exc:
        raise RequestValidationError([{"loc": ("body",), "msg": str(exc), "type": "value_error"}]) from exc
    log.info("alert settings changed", actor=principal.name, slack=saved.slack, webhook=saved.webhook)
    return saved.public()
