"""``/api/v1/alerts`` (right ``configure``, with a token for every tenant: alerts cover every tenant's
destinations; a tenant's token gets 403): where operator alerts go, a Slack channel with its bot token
and/or a webhook with its ``whsec_`` signing secret. Secrets are write-only: the answer says only
whether each is set; a secret left out of a ``PUT`` is kept unless its address changes
(:mod:`absync.health.alerts`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import structlog
from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from absync.health import alerts
from absync.web.auth import Configurer, Principal
from absync.web.models import BAD_BODY, ERRORS
from absync.web.routes.common import invalid
from absync.web.state import app_state
from connectors.egress import EgressPolicy

log = structlog.get_logger(__name__)


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


def _all_tenants(principal: Principal) -> None:
    if principal.tenant is not None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "alert settings cover every tenant: a token for every tenant is needed"
        )


router = APIRouter(prefix="/alerts", tags=["alerts"], responses=ERRORS)


@router.get(
    "",
    response_model=AlertSettingsOut,
    summary="Where operator alerts go (secrets: only whether set)",
    description="403 with a token limited to a tenant.",
)
def get_alerts(request: Request, principal: Configurer) -> dict[str, Any]:
    _all_tenants(principal)
    state = app_state(request)
    return alerts.load(state.engine, state.box).public()


@router.put(
    "",
    response_model=AlertSettingsOut,
    responses=BAD_BODY,
    summary="Set where operator alerts go (Slack channel and/or signed webhook)",
    description="A secret left out (or empty) is kept, unless its address changes: then it must be "
    "entered again. Secrets are never returned. 403 with a token limited to a tenant. An address the "
    "egress policy refuses (loopback, private, link-local, metadata, in any spelling) or with a user "
    "or password is a 422; a name is checked at every send.",
)
def put_alerts(request: Request, principal: Configurer, body: AlertSettingsIn) -> dict[str, Any]:
    _all_tenants(principal)
    state = app_state(request)
    try:
        saved = alerts.save(
            state.engine,
            state.box,
            actor=principal.name,
            egress=EgressPolicy.from_settings(state.settings),
            **body.model_dump(),
        )
    except alerts.AlertSettingsError as exc:
        raise invalid(("body",), str(exc)) from exc
    log.info("alert settings changed", actor=principal.name, slack=saved.slack, webhook=saved.webhook)
    return saved.public()
