"""The operator API, under ``/api/v1``.

Reads come from the SQL view (deliveries, attempts, audit) and, for destinations, from the
destinations topic itself (:class:`streams.destinations.DestinationTable`): it is the source of
truth, it holds the encrypted secrets that "test connection" needs, and it lets a write be read back
at once. Writes never touch the view: Retry and Mark as processed produce a ``Command``, destination
changes produce to the destinations topic; the view follows from Kafka.

Rights: every route needs a token; ``view`` for deliveries and ``/me``, ``configure`` for
everything under ``/destinations``. A tenant-limited token gets 404 for other tenants' objects.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Annotated, Any, Literal

import sqlalchemy as sa
import structlog
from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from absync.web.auth import Configurer, Principal, Viewer, still_authenticated
from connectors.base import CallRecorder, ConnectorOptions
from connectors.exceptions import ConnectorError
from connectors.registry import connector_class
from processors.resync import ResyncProgress, ResyncRequest, run_resync
from projections import queries
from projections.db import deliveries, destination_audit
from projections.exceptions import BadCursorError
from schemas.codec import codec_for
from schemas.delivery import Command, CommandKind, Status
from schemas.destination import ChangeSelection, Destination
from streams.destination_input import DestinationCreate, DestinationUpdate, FiltersModel, check_id_namespace
from streams.destinations import DestinationError, destination_from_dict, publish_destination
from streams.logging import MASK
from streams.secrets import SecretDecryptionError
from streams.settings import Settings
from streams.topics import Topics

if TYPE_CHECKING:
    from absync.web.app import AppState

log = structlog.get_logger(__name__)

STREAM_POLL_SECONDS = 0.5
STREAM_LOOKBACK = dt.timedelta(seconds=10)
"""``updated_at`` comes from the processors' clocks, so a change may land in the view slightly
"in the past"; the stream re-reads this window and sends what it has not sent yet."""
STREAM_KEEPALIVE_SECONDS = 15.0
STREAM_RECHECK_SECONDS = 2.0
"""An open stream checks its token again this often: revoked or expired, the stream ends."""
WRITE_VISIBLE_TIMEOUT = 10.0


def _iso_date(value: object) -> object:
    """Only ``YYYY-MM-DD`` (pydantic would also take a number as a Unix timestamp)."""
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("a date is YYYY-MM-DD")
    return value


IsoDate = Annotated[dt.date, BeforeValidator(_iso_date)]
DestinationId = Annotated[str, Path(description="Destination id.", max_length=200)]
DeliveryId = Annotated[str, Path(description="Delivery id (dlv_...).", max_length=64)]

# -- models ------------------------------------------------------------------------------------------


class Problem(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No valid API token."},
    403: {"model": Problem, "description": "The token lacks the right."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "Unknown (or other tenant's)."}
}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": Problem, "description": "Not possible in this state."}
}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": Problem, "description": "Kafka did not acknowledge."}
}
BAD_BODY: dict[int | str, dict[str, Any]] = {400: {"model": Problem, "description": "The body is not JSON."}}


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    delivery_id: str
    destination_id: str
    tenant: str
    absence_id: str
    version: int
    change: str = Field(description="created, approved, updated, cancelled, deleted...")
    operation: Literal["UPSERT", "DELETE"]
    employee_id: str
    employee_name: str
    employee_email: str | None
    start_date: dt.date
    end_date: dt.date
    status: Status
    manual: bool = Field(description="Marked as processed by an operator.")
    trigger: str
    attempt_count: int
    next_retry_at: dt.datetime | None
    last_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    status_id: str
    number: int
    started_at: dt.datetime
    duration_ms: float
    trigger: str
    request_method: str
    request_url: str
    request_headers: dict[str, str] = Field(description="Secrets masked.")
    request_body: str
    response_status: int | None
    response_headers: dict[str, str]
    response_body: str | None = Field(description="Cut at 20 kB.")
    error: str | None
    calls: list[dict[str, Any]] = Field(description="Every HTTP call of the attempt, secrets masked.")


class DeliveryDetailOut(DeliveryOut):
    attempts: list[AttemptOut]


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class DeliveryStats(BaseModel):
    counts: dict[Status, int] = Field(description="Every status, 0 included.")
    total: int


class CommandAccepted(BaseModel):
    command_id: str
    kind: CommandKind
    delivery_id: str


class Me(BaseModel):
    name: str
    right: Literal["view", "configure"]
    tenant: str | None = Field(description="null: every tenant.")


class DestinationOut(BaseModel):
    id: str
    tenant: str
    name: str
    kind: str
    enabled: bool
    filters: FiltersModel
    changes: ChangeSelection
    settings: dict[str, Any]
    secrets: dict[str, str] = Field(description=f"Secret names; values are always {MASK!r}.")
    revision: int
    updated_at: dt.datetime
    updated_by: str


class DestinationDetailOut(DestinationOut):
    deliveries: dict[Status, int] = Field(description="Deliveries of this destination per status.")
    success_rate: float | None = Field(description="Over its last 100 finished deliveries.")
    last_error: str | None
    last_error_at: dt.datetime | None


class RecordedCallOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    method: str
    url: str
    request_headers: dict[str, str]
    request_body: str
    started_at: dt.datetime
    duration_ms: float
    response_status: int | None
    response_headers: dict[str, str]
    response_body: str | None
    error: str | None


class ConnectionTest(BaseModel):
    ok: bool
    summary: str | None = Field(description="What the destination answered (ok).")
    error: str | None = Field(description="Why it failed (not ok).")
    calls: list[RecordedCallOut] = Field(description="The calls made, secrets masked.")


class AuditEntry(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    destination_id: str
    tenant: str
    actor: str
    action: str
    changes: dict[str, Any] = Field(description="field -> {from, to}; secret values masked.")
    at: dt.datetime


# -- helpers -----------------------------------------------------------------------------------------


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.absync
    return state


def invalid(loc: tuple[str, ...], message: str) -> RequestValidationError:
    """A 422 shaped like FastAPI's own (one error format for clients, as documented)."""
    return RequestValidationError([{"loc": loc, "msg": message, "type": "value_error"}])


def _not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no such {what}")


def _destination_out(destination: Destination) -> dict[str, Any]:
    return {
        "id": destination.id,
        "tenant": destination.tenant,
        "name": destination.name,
        "kind": destination.kind,
        "enabled": destination.enabled,
        "filters": destination.filters.to_avro(),
        "changes": destination.changes,
        "settings": destination.settings,
        "secrets": dict.fromkeys(sorted(destination.secrets), MASK),
        "revision": destination.revision,
        "updated_at": destination.updated_at,
        "updated_by": destination.updated_by,
    }


def audit_changes(before: Destination | None, after: Destination) -> dict[str, Any]:
    """What a write changed: ``{field: {"from": old, "to": new}}``; a secret shows only as set."""
    old = _destination_out(before) if before else {}
    new = _destination_out(after)
    changes: dict[str, Any] = {}
    for name in ("tenant", "name", "kind", "enabled", "filters", "changes", "settings"):
        if old.get(name) != new[name]:
            changes[name] = {"from": old.get(name), "to": new[name]}
    touched = [n for n, token in after.secrets.items() if before is None or before.secrets.get(n) != token]
    if touched:
        changes["secrets"] = {name: {"to": MASK} for name in sorted(touched)}
    return json.loads(json.dumps(changes, default=str))  # type: ignore[no-any-return]


def _visible_destination(state: AppState, principal: Principal, destination_id: str) -> Destination:
    destination = state.destinations.get(destination_id)
    if destination is None or not principal.sees(destination.tenant):
        raise _not_found("destination")
    return destination


def _visible_delivery(state: AppState, principal: Principal, delivery_id: str) -> queries.DeliveryDetail:
    detail = queries.get_delivery(state.engine, delivery_id, tenant=principal.tenant)
    if detail is None:
        raise _not_found("delivery")
    return detail


# -- deliveries --------------------------------------------------------------------------------------

deliveries_router = APIRouter(prefix="/deliveries", tags=["deliveries"], responses=ERRORS)


@deliveries_router.get("", response_model=DeliveryPage, summary="List deliveries, newest change first")
def list_deliveries(
    request: Request,
    principal: Viewer,
    status_: Annotated[Status | None, Query(alias="status")] = None,
    destination: Annotated[str | None, Query(description="Destination id.", max_length=200)] = None,
    employee: Annotated[
        str | None, Query(description="Part of the employee's name or email.", max_length=200)
    ] = None,
    absence: Annotated[str | None, Query(description="Absence id.", max_length=200)] = None,
    date_from: Annotated[IsoDate | None, Query(description="Absences ending on or after.")] = None,
    date_to: Annotated[IsoDate | None, Query(description="Absences starting on or before.")] = None,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_LIMIT)] = 50,
) -> queries.Page:
    try:
        return queries.list_deliveries(
            _state(request).engine,
            tenant=principal.tenant,
            status=status_.value if status_ else None,
            destination_id=destination,
            employee=employee,
            absence_id=absence,
            date_from=date_from,
            date_to=date_to,
            cursor=cursor,
            limit=limit,
        )
    except BadCursorError as exc:
        raise invalid(("query", "cursor"), "not a cursor from this API: pass next_cursor back as is") from exc


@deliveries_router.get("/stats", response_model=DeliveryStats, summary="Number of deliveries per status")
def delivery_stats(
    request: Request,
    principal: Viewer,
    destination: Annotated[str | None, Query(description="Only this destination.", max_length=200)] = None,
) -> DeliveryStats:
    counts = queries.count_by_status(
        _state(request).engine, tenant=principal.tenant, destination_id=destination
    )
    full = {s: counts.get(s.value, 0) for s in Status}
    return DeliveryStats(counts=full, total=sum(full.values()))


def _changes(state: AppState, tenant: str | None, watermark: dt.datetime) -> list[queries.DeliverySummary]:
    """Rows changed after ``watermark`` (oldest first, at most a page: the next poll goes on from
    there) and rows that landed late in the lookback window before it."""
    columns = [deliveries.c[name] for name in queries.DeliverySummary.__slots__]
    base = sa.select(*columns).order_by(deliveries.c.updated_at, deliveries.c.delivery_id).limit(500)
    if tenant is not None:
        base = base.where(deliveries.c.tenant == tenant)
    late = base.where(
        deliveries.c.updated_at > watermark - STREAM_LOOKBACK, deliveries.c.updated_at <= watermark
    )
    new = base.where(deliveries.c.updated_at > watermark)
    with state.engine.connect() as conn:
        return [queries.DeliverySummary(*row) for query in (late, new) for row in conn.execute(query)]


def _latest_update(state: AppState, tenant: str | None) -> dt.datetime:
    query = sa.select(sa.func.max(deliveries.c.updated_at))
    if tenant is not None:
        query = query.where(deliveries.c.tenant == tenant)
    with state.engine.connect() as conn:
        latest = conn.execute(query).scalar()
    return latest or dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


async def _change_events(request: Request, state: AppState, principal: Principal) -> AsyncIterator[str]:
    """Server-sent events: one ``delivery`` event (a DeliveryOut as JSON) per changed delivery.
    Ends when the token is revoked or expires (checked every ``STREAM_RECHECK_SECONDS``)."""
    watermark = await run_in_threadpool(_latest_update, state, principal.tenant)
    # What the view holds at connection time counts as sent: the stream carries changes only.
    known = await run_in_threadpool(_changes, state, principal.tenant, watermark)
    sent = {row.delivery_id: row.updated_at for row in known}
    last_output = checked = time.monotonic()
    yield ": connected\n\n"
    while not state.stopping.is_set() and not await request.is_disconnected():
        if time.monotonic() - checked >= STREAM_RECHECK_SECONDS:
            if not await run_in_threadpool(still_authenticated, request):
                log.info("live stream closed: its token is no longer valid", actor=principal.name)
                yield "event: unauthorized\ndata: {}\n\n"
                return
            checked = time.monotonic()
        rows = await run_in_threadpool(_changes, state, principal.tenant, watermark)
        for row in rows:
            if sent.get(row.delivery_id) == row.updated_at:
                continue
            sent[row.delivery_id] = row.updated_at
            watermark = max(watermark, row.updated_at)
            data = DeliveryOut.model_validate(row).model_dump_json()
            yield f"event: delivery\nid: {row.delivery_id}\ndata: {data}\n\n"
            last_output = time.monotonic()
        horizon = watermark - STREAM_LOOKBACK
        sent = {k: v for k, v in sent.items() if v > horizon}
        if time.monotonic() - last_output > STREAM_KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_output = time.monotonic()
        await asyncio.sleep(STREAM_POLL_SECONDS)


@deliveries_router.get(
    "/stream",
    summary="Live changes (server-sent events)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "`event: delivery`, data = a delivery."}
    },
)
def stream_deliveries(request: Request, principal: Viewer) -> StreamingResponse:
    return StreamingResponse(
        _change_events(request, _state(request), principal),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@deliveries_router.get(
    "/{delivery_id}",
    response_model=DeliveryDetailOut,
    responses=NOT_FOUND,
    summary="One delivery with its attempts",
)
def get_delivery(request: Request, principal: Viewer, delivery_id: DeliveryId) -> dict[str, Any]:
    detail = _visible_delivery(_state(request), principal, delivery_id)
    return {**asdict(detail.delivery), "attempts": [asdict(a) for a in detail.attempts]}


REFUSED: dict[CommandKind, dict[str, str]] = {
    CommandKind.RETRY: {
        Status.SUPERSEDED: "a newer change of this absence replaced this delivery: retry that one",
    },
    CommandKind.MARK_PROCESSED: {
        Status.SUCCESSFUL: "the delivery is already successful",
        Status.SUPERSEDED: "a newer change of this absence replaced this delivery",
    },
}
"""Commands that make no sense in a status (409). Retry is allowed on Error, Successful (send again)
and Pending (send now instead of waiting for the next retry); Mark as processed on Error and
Pending."""


def _issue_command(
    state: AppState, principal: Principal, delivery_id: str, kind: CommandKind
) -> CommandAccepted:
    delivery = _visible_delivery(state, principal, delivery_id).delivery
    reason = REFUSED[kind].get(Status(delivery.status))
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
        unacknowledged = state.producer.flush(WRITE_VISIBLE_TIMEOUT)
    if unacknowledged:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "Kafka did not acknowledge the command: try again"
        )
    log.info("command issued", kind=kind.value, delivery=delivery.delivery_id, actor=principal.name)
    return CommandAccepted(command_id=command.command_id, kind=kind, delivery_id=delivery.delivery_id)


@deliveries_router.post(
    "/{delivery_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CommandAccepted,
    responses={**NOT_FOUND, **CONFLICT, **UNAVAILABLE},
    summary="Send again now (one attempt, no automatic retry after it)",
    description="409 if the delivery is Superseded.",
)
def retry_delivery(request: Request, principal: Viewer, delivery_id: DeliveryId) -> CommandAccepted:
    return _issue_command(_state(request), principal, delivery_id, CommandKind.RETRY)


@deliveries_router.post(
    "/{delivery_id}/mark-processed",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CommandAccepted,
    responses={**NOT_FOUND, **CONFLICT, **UNAVAILABLE},
    summary="Mark as processed (handled by hand; no more attempts)",
    description="409 if the delivery is Successful or Superseded.",
)
def mark_processed(request: Request, principal: Viewer, delivery_id: DeliveryId) -> CommandAccepted:
    return _issue_command(_state(request), principal, delivery_id, CommandKind.MARK_PROCESSED)


# -- destinations ------------------------------------------------------------------------------------

destinations_router = APIRouter(prefix="/destinations", tags=["destinations"], responses=ERRORS)
_write_lock = threading.Lock()
"""Destination writes are read-modify-write (revision, kept secrets): one at a time per process."""


def _publish(
    state: AppState, principal: Principal, before: Destination | None, after: Destination, action: str
) -> None:
    """Writes the destination to Kafka, waits until this process reads it back, then audits it."""
    publish_destination(state.settings, after)
    deadline = time.monotonic() + WRITE_VISIBLE_TIMEOUT
    while time.monotonic() < deadline:
        seen = state.destinations.get(after.id)
        if seen is not None and seen.revision >= after.revision:
            break
        time.sleep(0.02)
    else:
        log.warning("destination written but not read back yet", destination=after.id)
    with state.engine.begin() as conn:
        conn.execute(
            destination_audit.insert().values(
                destination_id=after.id,
                tenant=after.tenant,
                actor=principal.name,
                action=action,
                changes=audit_changes(before, after),
                at=dt.datetime.now(dt.UTC),
            )
        )
    log.info("destination changed", destination=after.id, action=action, actor=principal.name)


def _build(
    state: AppState, principal: Principal, data: dict[str, Any], before: Destination | None
) -> Destination:
    try:
        return destination_from_dict(data, state.box, actor=principal.name, previous=before)
    except DestinationError as exc:
        raise invalid(("body",), str(exc)) from exc


@destinations_router.get("", response_model=list[DestinationOut], summary="List destinations")
def list_destinations(request: Request, principal: Configurer) -> list[dict[str, Any]]:
    items = _state(request).destinations.all(principal.tenant)
    return [_destination_out(d) for d in sorted(items, key=lambda d: (d.name, d.id))]


@destinations_router.get(
    "/{destination_id}", response_model=DestinationDetailOut, responses=NOT_FOUND, summary="One destination"
)
def get_destination(request: Request, principal: Configurer, destination_id: DestinationId) -> dict[str, Any]:
    state = _state(request)
    destination = _visible_destination(state, principal, destination_id)
    counts = queries.count_by_status(state.engine, tenant=destination.tenant, destination_id=destination.id)
    health = queries.destination_health(state.engine, destination.id)
    return {
        **_destination_out(destination),
        "deliveries": {s: counts.get(s.value, 0) for s in Status},
        **asdict(health),
    }


@destinations_router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DestinationOut,
    responses={**BAD_BODY, **CONFLICT, **UNAVAILABLE},
    summary="Create a destination",
    description="403 if the token is limited to another tenant; 409 if the id is taken. A token "
    "limited to a tenant creates ids `TENANT:NAME` only, so a 409 is always about its own tenant.",
)
def create_destination(request: Request, principal: Configurer, body: DestinationCreate) -> dict[str, Any]:
    state = _state(request)
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
    with _write_lock:
        if state.destinations.get(body.id) is not None:
            raise HTTPException(status.HTTP_409_CONFLICT, f"destination id {body.id!r} is taken")
        created = _build(state, principal, {**body.model_dump(), "tenant": tenant, "revision": 1}, None)
        _publish(state, principal, None, created, "create")
    return _destination_out(created)


def _change(
    state: AppState, principal: Principal, destination_id: str, action: str, changes: dict[str, Any]
) -> dict[str, Any]:
    with _write_lock:
        before = _visible_destination(state, principal, destination_id)
        data = {**_destination_out(before), "secrets": {}, **changes}
        after = _build(state, principal, data, before)
        if audit_changes(before, after):
            _publish(state, principal, before, after, action)
        else:
            after = before
    return _destination_out(after)


@destinations_router.put(
    "/{destination_id}",
    response_model=DestinationOut,
    responses={**BAD_BODY, **NOT_FOUND, **UNAVAILABLE},
    summary="Replace a destination's configuration (secrets left out are kept)",
)
def update_destination(
    request: Request, principal: Configurer, destination_id: DestinationId, body: DestinationUpdate
) -> dict[str, Any]:
    return _change(_state(request), principal, destination_id, "update", body.model_dump())


@destinations_router.post(
    "/{destination_id}/disable",
    response_model=DestinationOut,
    responses={**NOT_FOUND, **UNAVAILABLE},
    summary="Stop sending to a destination",
)
def disable_destination(
    request: Request, principal: Configurer, destination_id: DestinationId
) -> dict[str, Any]:
    return _change(_state(request), principal, destination_id, "disable", {"enabled": False})


@destinations_router.post(
    "/{destination_id}/enable",
    response_model=DestinationOut,
    responses={**NOT_FOUND, **UNAVAILABLE},
    summary="Send to a destination again",
)
def enable_destination(
    request: Request, principal: Configurer, destination_id: DestinationId
) -> dict[str, Any]:
    return _change(_state(request), principal, destination_id, "enable", {"enabled": True})


@destinations_router.post(
    "/{destination_id}/test",
    response_model=ConnectionTest,
    responses=NOT_FOUND,
    summary="Test the connection (a harmless call with the stored settings and secrets)",
    description="200 whether or not the destination answers well: `ok` says which.",
)
async def test_destination(
    request: Request, principal: Configurer, destination_id: DestinationId
) -> ConnectionTest:
    state = _state(request)
    destination = _visible_destination(state, principal, destination_id)
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


@destinations_router.get(
    "/{destination_id}/audit",
    response_model=list[AuditEntry],
    responses=NOT_FOUND,
    summary="Who changed what and when (newest first)",
)
def destination_audit_trail(
    request: Request,
    principal: Configurer,
    destination_id: DestinationId,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[Any]:
    state = _state(request)
    query = (
        sa.select(destination_audit)
        .where(destination_audit.c.destination_id == destination_id)
        .order_by(destination_audit.c.at.desc(), destination_audit.c.id.desc())
        .limit(limit)
    )
    if principal.tenant is not None:
        query = query.where(destination_audit.c.tenant == principal.tenant)
    with state.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    if not rows:
        _visible_destination(
            state, principal, destination_id
        )  # 404 unless it exists (a new one has no trail)
    return [dict(row) for row in rows]


# -- resync (bulk replay to one destination, see processors/resync.py) ------------------------------


class ResyncOut(BaseModel):
    destination_id: str
    running: bool
    phase: str
    done: int = Field(description="Offsets of ``absences`` replayed so far.")
    total: int = Field(description="Offsets to replay.")
    upserts: int
    deletes: int
    completed: bool
    error: str | None


class ResyncJob:
    """A resync running in a thread of this API process; interrupted (process stopped), it resumes
    from its checkpoint when started again."""

    def __init__(self, settings: Settings, destination_id: str) -> None:
        self.destination_id = destination_id
        self.progress = ResyncProgress()
        self.error: str | None = None
        self._settings = settings
        self._thread = threading.Thread(target=self._run, name=f"resync-{destination_id}", daemon=True)

    def start(self) -> ResyncJob:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        def update(progress: ResyncProgress) -> None:
            self.progress = replace(progress)

        try:
            self.progress = run_resync(self._settings, ResyncRequest(self.destination_id), progress=update)
        except Exception as exc:  # reported by GET .../resync; the checkpoint keeps what was done
            log.exception("resync failed", destination=self.destination_id)
            self.error = str(exc)

    def out(self) -> ResyncOut:
        p = self.progress
        return ResyncOut(
            destination_id=self.destination_id,
            running=self.running,
            phase=p.phase,
            done=p.done,
            total=p.total,
            upserts=p.upserts,
            deletes=p.deletes,
            completed=p.completed,
            error=self.error,
        )


def _resync_jobs(request: Request) -> dict[str, ResyncJob]:
    jobs: dict[str, ResyncJob] | None = getattr(request.app.state, "resync_jobs", None)
    if jobs is None:
        jobs = request.app.state.resync_jobs = {}
    return jobs


@destinations_router.post(
    "/{destination_id}/resync",
    response_model=ResyncOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Send the destination what it should hold now (replay of absences, in the background)",
    description="Starts a resync unless one is running (then returns its progress).",
)
def start_resync(request: Request, principal: Configurer, destination_id: DestinationId) -> ResyncOut:
    state = _state(request)
    destination = _visible_destination(state, principal, destination_id)
    if not destination.enabled:
        raise HTTPException(status.HTTP_409_CONFLICT, "the destination is disabled: enable it first")
    jobs = _resync_jobs(request)
    job = jobs.get(destination_id)
    if job is None or not job.running:
        job = jobs[destination_id] = ResyncJob(state.settings, destination_id).start()
    return job.out()


@destinations_router.get(
    "/{destination_id}/resync",
    response_model=ResyncOut,
    responses=NOT_FOUND,
    summary="Progress of the destination's resync started by this API process",
)
def resync_progress(request: Request, principal: Configurer, destination_id: DestinationId) -> ResyncOut:
    _visible_destination(_state(request), principal, destination_id)
    job = _resync_jobs(request).get(destination_id)
    if job is None:
        raise _not_found("resync")
    return job.out()


# -- me ----------------------------------------------------------------------------------------------

me_router = APIRouter(tags=["me"], responses=ERRORS)


@me_router.get("/me", response_model=Me, summary="Who this token is")
def me(principal: Viewer) -> Me:
    return Me(name=principal.name, right=principal.right.value, tenant=principal.tenant)


router = APIRouter(prefix="/api/v1")
router.include_router(deliveries_router)
router.include_router(destinations_router)
router.include_router(me_router)
