"""``/api/v1/destinations``: list, read, create, replace, enable/disable, test the connection, and
the audit trail. Right ``configure``; a tenant-limited token sees and writes its tenant's only.

Reads come from the destinations topic itself (:class:`streams.destinations.DestinationTable`): it is
the source of truth, holds the encrypted secrets that "test connection" needs, and shows a write at
once. Every write goes through :class:`absync.services.destinations.DestinationService` (revision,
kept secrets, read-your-write, audit record with the token's name as actor); no secret value is
ever returned. Resync is in :mod:`absync.web.routes.resync`; enabling a disabled destination starts
its catch-up resync (:func:`absync.web.resync_jobs.catch_up_on_enable`).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status

from absync.services.destinations import DestinationExists, DestinationNotFound, public_view
from absync.web.auth import Configurer, Principal
from absync.web.models import (
    BAD_BODY,
    CONFLICT,
    ERRORS,
    NOT_FOUND,
    UNAVAILABLE,
    AuditEntry,
    ConnectionTest,
    DestinationDetailOut,
    DestinationOut,
    RecordedCallOut,
)
from absync.web.resync_jobs import catch_up_on_enable
from absync.web.routes.common import DestinationId, invalid, not_found, visible_destination
from absync.web.state import AppState, app_state
from connectors.base import CallRecorder, ConnectorOptions
from connectors.exceptions import ConnectorError
from connectors.registry import connector_class
from projections import queries
from schemas.delivery import Status
from schemas.destination import Destination
from streams.destination_input import DestinationCreate, DestinationUpdate, check_id_namespace
from streams.destinations import DestinationError, destination_from_dict
from streams.secrets import SecretDecryptionError

router = APIRouter(prefix="/destinations", tags=["destinations"], responses=ERRORS)


def _build(state: AppState, principal: Principal, data: dict[str, Any]) -> Destination:
    """The candidate of a write (secrets encrypted: only those entered); 422 if invalid."""
    try:
        return destination_from_dict(data, state.box, actor=principal.name)
    except DestinationError as exc:
        raise invalid(("body",), str(exc)) from exc


@router.get("", response_model=list[DestinationOut], summary="List destinations")
def list_destinations(request: Request, principal: Configurer) -> list[dict[str, Any]]:
    items = app_state(request).destinations.all(principal.tenant)
    return [public_view(d) for d in sorted(items, key=lambda d: (d.name, d.id))]


@router.get(
    "/{destination_id}", response_model=DestinationDetailOut, responses=NOT_FOUND, summary="One destination"
)
def get_destination(request: Request, principal: Configurer, destination_id: DestinationId) -> dict[str, Any]:
    state = app_state(request)
    destination = visible_destination(state, principal, destination_id)
    counts = queries.count_by_status(state.engine, tenant=destination.tenant, destination_id=destination.id)
    health = queries.destination_health(state.engine, destination.id)
    return {
        **public_view(destination),
        "deliveries": {s: counts.get(s.value, 0) for s in Status},
        **asdict(health),
    }


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DestinationOut,
    responses={**BAD_BODY, **CONFLICT, **UNAVAILABLE},
    summary="Create a destination",
    description="403 if the token is limited to another tenant; 409 if the id is taken. A token "
    "limited to a tenant creates ids `TENANT:NAME` only, so a 409 is always about its own tenant.",
)
def create_destination(request: Request, principal: Configurer, body: DestinationCreate) -> dict[str, Any]:
    state = app_state(request)
    tenant = body.tenant or principal.tenant
    if tenant is None:
        raise invalid(("body", "tenant"), "required with a token that is not limited to one tenant")
    if not principal.sees(tenant):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this token is limited to another tenant")
    problem = check_id_namespace(body.id, tenant)
    if problem is None and principal.tenant is not None and not body.id.startswith(f"{tenant}:"):
        problem = f"a token limited to a tenant creates ids of its namespace: {tenant + ':'}NAME"
    if problem:  # decided from the request alone: says nothing about other tenants' ids
        raise invalid(("body", "id"), problem)
    candidate = _build(state, principal, {**body.model_dump(), "tenant": tenant, "revision": 1})
    try:
        written = state.destination_writes.create(candidate, actor=principal.name)
    except DestinationExists as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except DestinationError as exc:
        raise invalid(("body",), str(exc)) from exc
    return public_view(written.destination)


def _change(
    state: AppState, principal: Principal, destination_id: str, action: str, changes: dict[str, Any]
) -> dict[str, Any]:
    """``changes`` over the destination's current fields (secrets: only those entered)."""

    def edit(before: Destination) -> Destination:
        return _build(state, principal, {**public_view(before), "secrets": {}, **changes})

    try:
        written = state.destination_writes.update(
            destination_id,
            edit,
            actor=principal.name,
            action=action,
            visible=lambda d: principal.sees(d.tenant),
        )
    except DestinationNotFound as exc:
        raise not_found("destination") from exc
    except DestinationError as exc:
        raise invalid(("body",), str(exc)) from exc
    catch_up_on_enable(state.settings, state.resync_jobs, written.previous, written.destination)
    return public_view(written.destination)


@router.put(
    "/{destination_id}",
    response_model=DestinationOut,
    responses={**BAD_BODY, **NOT_FOUND, **UNAVAILABLE},
    summary="Replace a destination's configuration (secrets left out are kept)",
)
def update_destination(
    request: Request, principal: Configurer, destination_id: DestinationId, body: DestinationUpdate
) -> dict[str, Any]:
    return _change(app_state(request), principal, destination_id, "update", body.model_dump())


@router.post(
    "/{destination_id}/disable",
    response_model=DestinationOut,
    responses={**NOT_FOUND, **UNAVAILABLE},
    summary="Stop sending to a destination",
)
def disable_destination(
    request: Request, principal: Configurer, destination_id: DestinationId
) -> dict[str, Any]:
    return _set_enabled(app_state(request), principal, destination_id, False)


@router.post(
    "/{destination_id}/enable",
    response_model=DestinationOut,
    responses={**NOT_FOUND, **UNAVAILABLE},
    summary="Send to a destination again",
)
def enable_destination(
    request: Request, principal: Configurer, destination_id: DestinationId
) -> dict[str, Any]:
    return _set_enabled(app_state(request), principal, destination_id, True)


def _set_enabled(state: AppState, principal: Principal, destination_id: str, enabled: bool) -> dict[str, Any]:
    try:
        written = state.destination_writes.set_enabled(
            destination_id, enabled, actor=principal.name, visible=lambda d: principal.sees(d.tenant)
        )
    except DestinationNotFound as exc:
        raise not_found("destination") from exc
    catch_up_on_enable(state.settings, state.resync_jobs, written.previous, written.destination)
    return public_view(written.destination)


@router.post(
    "/{destination_id}/test",
    response_model=ConnectionTest,
    responses=NOT_FOUND,
    summary="Test the connection (a harmless call with the stored settings and secrets)",
    description="200 whether or not the destination answers well: `ok` says which.",
)
async def test_destination(
    request: Request, principal: Configurer, destination_id: DestinationId
) -> ConnectionTest:
    state = app_state(request)
    destination = visible_destination(state, principal, destination_id)
    recorder = CallRecorder()
    try:
        secrets = state.box.decrypt_all(destination.secrets)
        recorder = CallRecorder(secrets)
        connector = connector_class(destination.kind)(
            destination, secrets, ConnectorOptions.from_settings(state.settings)
        )
        try:
            await connector.setup()
            outcome = await asyncio.wait_for(
                connector.test_connection(recorder), state.settings.connector_timeout * 3
            )
        finally:
            await connector.close()
    except (ConnectorError, SecretDecryptionError, TimeoutError) as exc:
        recorder.fail_open_calls(str(exc) or type(exc).__name__)
        error = recorder.scrub(str(exc) or type(exc).__name__)
        return ConnectionTest(
            ok=False,
            summary=None,
            error=error,
            calls=[RecordedCallOut.model_validate(c) for c in recorder.calls],
        )
    return ConnectionTest(
        ok=True,
        summary=outcome.summary,
        error=None,
        calls=[RecordedCallOut.model_validate(c) for c in recorder.calls],
    )


@router.get(
    "/{destination_id}/audit",
    response_model=list[AuditEntry],
    responses=NOT_FOUND,
    summary="Who changed what and when (newest first)",
)
def destination_audit_trail(
    request: Request,
    principal: Configurer,
    destination_id: DestinationId,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_AUDIT_LIMIT)] = 100,
) -> list[queries.AuditRecord]:
    state = app_state(request)
    rows = queries.audit_trail(state.engine, destination_id, tenant=principal.tenant, limit=limit)
    if not rows:
        visible_destination(state, principal, destination_id)  # 404 unless it exists (a new one has no trail)
    return rows
