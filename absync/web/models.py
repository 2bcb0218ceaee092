"""The API's response models and the error responses its routes declare (OpenAPI).

A model here is a contract with clients: ``DestinationOut`` never carries a secret value (names
only, each masked), ``AttemptOut`` and ``RecordedCallOut`` carry what the connectors recorded with
secrets already masked.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from schemas.delivery import CommandKind, Status
from schemas.destination import ChangeSelection
from streams.destination_input import FiltersModel
from streams.logging import MASK


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
    change: str = Field(description="created, approved, updated, cancelled, refused, deleted...")
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
    external_id: str | None = Field(
        default=None,
        description="What the destination holds the absence as (calendar event id, ADP leave id, "
        "resource URL), from its latest success; null before one, or if the destination gave none.",
    )
    legal_entity_id: str | None = Field(default=None, description="The employee's (null: older records).")
    department_id: str | None = Field(default=None, description="The employee's, if any.")


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
    rate_limit: float | None = Field(description="Requests per second at most; null: no limit.")
    settings: dict[str, Any]
    secrets: dict[str, str] = Field(description=f"Secret names; values are always {MASK!r}.")
    revision: int
    updated_at: dt.datetime
    updated_by: str
    disabled_at: dt.datetime | None = Field(
        default=None,
        description="When it was disabled (null while enabled): enabling resyncs what changed since.",
    )


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


def _optional_iso_date(value: object) -> object:
    """Only ``YYYY-MM-DD`` (pydantic would also take a number as a Unix timestamp)."""
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("a date is YYYY-MM-DD")
    return value


def _iso_time(value: object) -> object:
    """Only ISO 8601 text (pydantic would also take a number as a Unix timestamp)."""
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ].*)?", value):
        raise ValueError("a time is ISO 8601 (YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM])")
    return value


KAFKA_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _kafka_time(value: dt.datetime | None) -> dt.datetime | None:
    """A time Kafka can look records up by: from 1970 (record timestamps are Unix milliseconds; an
    earlier one made the broker answer UNSUPPORTED_VERSION and the resync job fail after its 202)."""
    if value is None:
        return None
    try:
        utc = (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    except OverflowError:  # 9999-12-31T23:59-14:00 is past year 9999 in UTC
        utc = None
    if utc is None or utc < KAFKA_EPOCH:
        raise ValueError("must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z")
    return value


def _plain_text(value: str | None) -> str | None:
    """No control character (NUL, line breaks, escapes): no id holds one, PostgreSQL refuses a NUL."""
    if value is not None and re.search(r"[\x00-\x1f\x7f]", value):
        raise ValueError("must not contain control characters (NUL, line breaks, escapes)")
    return value


PlainId = Annotated[str | None, AfterValidator(_plain_text)]


class ResyncIn(BaseModel):
    """What to resync; every field is optional (nothing: every absence the destination should hold)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "ending_on_or_after": "2026-03-01",
                "legal_entity": "le-fr",
                "department": "dep-sales",
            }
        },
    )

    ending_on_or_after: Annotated[dt.date | None, BeforeValidator(_optional_iso_date)] = Field(
        default=None,
        description="Every absence ending on or after this date (YYYY-MM-DD): the absence's own date, "
        "the product's back-fill from a date.",
    )
    legal_entity: PlainId = Field(default=None, min_length=1, max_length=256, description="Legal entity id.")
    department: PlainId = Field(default=None, min_length=1, max_length=256, description="Department id.")
    changed_since: Annotated[dt.datetime | None, BeforeValidator(_iso_time), AfterValidator(_kafka_time)] = (
        Field(
            default=None,
            description="Only absences whose latest change was written to Kafka at or after this time "
            "(ISO 8601; UTC without an offset). Not the absence's date: see ending_on_or_after.",
        )
    )


class AuditPageOut(BaseModel):
    items: list[AuditEntry]
    next_cursor: int | None = Field(description="Pass as `before` for the next page; null on the last.")


class ResyncOut(BaseModel):
    destination_id: str
    reason: Literal["operator", "re-enabled"] = Field(
        description="operator: started by hand; re-enabled: the catch-up of an enable."
    )
    parameters: dict[str, str | None] = Field(description="What the job replays (null: no restriction).")
    running: bool
    phase: str
    done: int = Field(description="Offsets of ``absences`` replayed so far.")
    total: int = Field(description="Offsets to replay.")
    upserts: int
    deletes: int
    sent: int = Field(description="Resync requests sent (absences whose latest state passed the filters).")
    skipped: int = Field(
        description="Records not sent: older states, erasures, outside the filters or scope."
    )
    failed: int = Field(description="Records that could not be read (dead-lettered by the fan-out).")
    seconds: float = Field(description="Seconds the job has run (in this process).")
    rate: float = Field(description="Offsets replayed per second by this job.")
    seconds_left: float | None = Field(
        description="Estimated seconds to the end at that rate (null: unknown)."
    )
    completed: bool
    error: str | None


class RecoverIn(BaseModel):
    """``POST /destinations/{id}/recover``: re-send its deliveries in Error since ``since``."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {"since": "2026-03-02T08:00:00Z"}}
    )
    since: Annotated[AwareDatetime, BeforeValidator(_iso_time)] = Field(
        description="Deliveries whose status became Error at or after this time: ISO 8601 with its UTC "
        "offset (a number is refused, not taken as a Unix timestamp)."
    )


class RecoverOut(BaseModel):
    destination_id: str
    since: dt.datetime
    started_by: str
    started_at: dt.datetime
    running: bool
    phase: Literal["listing", "sending", "done"]
    done: int = Field(description="Deliveries re-sent so far (one RETRY command each).")
    total: int = Field(description="Deliveries to re-send (known once listed).")
    skipped: dict[str, int] = Field(description="Deliveries in Error not re-sent, by reason.")
    skip_reasons: dict[str, str] = Field(description="What each reason in ``skipped`` means.")
    completed: bool
    error: str | None


BulkActionName = Literal["retry", "mark-processed"]


class BulkCountOut(BaseModel):
    """What the list's filters select, for the confirmation of a bulk action."""

    matching: int = Field(description="Deliveries the filters select (counted up to `limit` + 1).")
    limit: int = Field(description="Deliveries a bulk action acts on at most.")
    over_limit: bool = Field(description="More than `limit` match: a bulk action is refused; narrow them.")
    by_status: dict[Status, int] = Field(description="The selected deliveries per status (0s left out).")
    actionable: dict[BulkActionName, int] = Field(
        description="Per action, how many it would act on as their statuses are now (the rest skipped)."
    )
    destinations: int = Field(description="Destinations they belong to.")


class BulkOut(BaseModel):
    job_id: str
    action: BulkActionName
    filters: dict[str, str] = Field(description="The list's filters the deliveries were selected by.")
    started_by: str
    started_at: dt.datetime
    running: bool
    phase: Literal["sending", "done"]
    total: int = Field(description="Deliveries selected when the job started.")
    done: int = Field(description="Commands sent so far (one per delivery acted on).")
    skipped: dict[str, int] = Field(
        description="Deliveries not acted on, by reason: their status now (where the single action "
        "is refused too), or `stopped`."
    )
    skip_reasons: dict[str, str] = Field(description="What each reason in `skipped` means.")
    failed: int = Field(description="Deliveries that could not be acted on (gone, unreadable).")
    failures: list[str] = Field(description="The first failures: `delivery id: reason`.")
    completed: bool
    error: str | None
