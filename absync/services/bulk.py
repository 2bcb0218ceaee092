"""Bulk actions on the follow-up list: "Retry all" and "Mark all as processed" on the deliveries a
filter selects. The API runs one as a tracked job (:mod:`absync.web.bulk_jobs`,
``POST /api/v1/deliveries/bulk/{action}``); the console asks for it from the follow-up page.

Guarantees:

- The selection is the list's own: the same filter (:class:`projections.queries.DeliveryFilter`,
  built by the list's query parameters), the same tenant scope (a tenant's token never selects
  another tenant's delivery), the same order (newest change first), read once when the job starts
  (:func:`select`). Bounded: at most :data:`MAX_DELIVERIES`; a filter selecting more is refused
  whole (the caller narrows it), never cut silently.
- The same rule as the single action (:func:`absync.services.commands.refusal`): each delivery's
  status is read again just before its command, and one in a status where the single Retry (or
  Mark as processed) is refused is skipped, counted by that status in the result.
- One delivery never stops the job: a delivery gone from the view since the selection (or of
  another tenant), or whose row cannot be read, is counted as failed with its reason (the first
  :data:`KEPT_FAILURES` reasons kept), and the job goes on with the next.
- The commands take the normal path, the single action's: one ``Command`` per delivery on the
  commands topic (:func:`processors.replay_failed.replay_failed`), rate-limited like a resync; the
  worker then acts on each as on a single Retry / Mark as processed. Kafka refusing them is the
  job's error (the commands acknowledged stay sent).
- Stopped early (the process stops), what was not sent is counted as skipped (``stopped``); the
  same action on the same filter then acts on what is left (a Retry of a delivery already retried
  makes one attempt more: at-least-once, like the single action clicked twice).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal

import structlog

from absync.services.commands import REFUSED, refusal
from processors.replay_failed import FailedDelivery, replay_failed
from processors.resync_io import DEFAULT_RATE
from projections import queries
from projections.queries.base import Bind
from schemas.delivery import CommandKind, Status
from streams.settings import Settings

log = structlog.get_logger(__name__)

MAX_DELIVERIES = 10_000
"""Deliveries one bulk action acts on at most; a filter selecting more is refused."""
KEPT_FAILURES = 20
"""Failure reasons kept in a job's result (the count covers them all)."""
STOPPED = "stopped"
GONE = "no longer in the view (erased or rebuilt since it was selected)"


class BulkAction(enum.StrEnum):
    RETRY = "retry"
    MARK_PROCESSED = "mark-processed"

    @property
    def command(self) -> CommandKind:
        return CommandKind.RETRY if self is BulkAction.RETRY else CommandKind.MARK_PROCESSED

    @property
    def audit_action(self) -> str:
        """The action the audit trail records a started job under."""
        return f"bulk-{self.value}"


def skip_reasons(action: BulkAction) -> dict[str, str]:
    """What each reason a job of ``action`` may skip for means (a refused status, or stopped)."""
    reasons = {status.lower(): why for status, why in REFUSED[action.command].items()}
    return {**reasons, STOPPED: "the job stopped before sending them (the process stopped)"}


class TooManyError(ValueError):
    """The filter selects more than :data:`MAX_DELIVERIES` deliveries."""


@dataclass(frozen=True, slots=True)
class Preview:
    """What a filter selects, for the confirmation: counted over at most ``MAX_DELIVERIES + 1``."""

    matching: int
    by_status: dict[str, int]
    tenants: list[str]
    destinations: dict[str, int]

    @property
    def over_limit(self) -> bool:
        return self.matching > MAX_DELIVERIES

    def actionable(self, action: BulkAction) -> int:
        """How many of them the action would not skip, as their statuses are now."""
        refused = REFUSED[action.command]
        return sum(n for status, n in self.by_status.items() if status not in refused)


def preview(bind: Bind, *, tenant: str | None, where: queries.DeliveryFilter) -> Preview:
    """The count query: what ``where`` selects in ``tenant``'s scope, by status (bounded work)."""
    counts = queries.count_matching(bind, tenant=tenant, where=where, limit=MAX_DELIVERIES + 1)
    by_status: dict[str, int] = {}
    destinations: dict[str, int] = {}
    for (_tenant, destination, status), n in counts.items():
        by_status[status] = by_status.get(status, 0) + n
        destinations[destination] = destinations.get(destination, 0) + n
    tenants = sorted({t for t, _, _ in counts})
    return Preview(sum(counts.values()), by_status, tenants, destinations)


def select(bind: Bind, *, tenant: str | None, where: queries.DeliveryFilter) -> list[queries.DeliveryRef]:
    """The deliveries a bulk action on ``where`` acts on (see the module docstring); raises
    :class:`TooManyError` above :data:`MAX_DELIVERIES`."""
    refs = queries.delivery_refs(bind, tenant=tenant, where=where, limit=MAX_DELIVERIES + 1)
    if len(refs) > MAX_DELIVERIES:
        raise TooManyError(
            f"more than {MAX_DELIVERIES:,} deliveries match these filters: narrow them "
            f"(a bulk action acts on {MAX_DELIVERIES:,} at most)"
        )
    return refs


def filter_fields(where: queries.DeliveryFilter) -> dict[str, str]:
    """The filter as given (fields set), as text: for the audit record and the job's result."""
    return {k: str(v) for k, v in asdict(where).items() if v is not None and v != ""}


def audit(
    bind: Bind,
    *,
    action: BulkAction,
    job_id: str,
    actor: str,
    where: queries.DeliveryFilter,
    refs: list[queries.DeliveryRef],
) -> None:
    """One audit record for a started bulk action: the filter and the count (action ``bulk-retry`` or
    ``bulk-mark-processed``). Its destination and tenant are the selection's if it has one only,
    ``*`` when it spans several (then only a token of every tenant sees the record)."""
    tenants = sorted({r.tenant for r in refs})
    destinations: dict[str, int] = {}
    for r in refs:
        destinations[r.destination_id] = destinations.get(r.destination_id, 0) + 1
    queries.record_audit(
        bind,
        destination_id=next(iter(destinations)) if len(destinations) == 1 else "*",
        tenant=tenants[0] if len(tenants) == 1 else "*",
        actor=actor,
        action=action.audit_action,
        changes={
            "job_id": job_id,
            "filters": filter_fields(where),
            "count": len(refs),
            "destinations": dict(sorted(destinations.items())[:50]),
        },
    )


@dataclass
class BulkProgress:
    """Where a bulk action is: of ``total`` selected, ``sent`` (a command each), ``skipped`` by
    reason, ``failed`` (with the first reasons)."""

    phase: Literal["sending", "done"] = "sending"
    total: int = 0
    sent: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    completed: bool = False

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def fail(self, delivery_id: str, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < KEPT_FAILURES:
            self.failures.append(f"{delivery_id}: {reason}")


def _to_send(
    bind: Bind,
    action: BulkAction,
    refs: Iterable[queries.DeliveryRef],
    tenant: str | None,
    state: BulkProgress,
    report: Callable[[BulkProgress], None],
) -> Iterator[FailedDelivery]:
    """The deliveries of ``refs`` the action applies to now; the others counted in ``state``."""
    for ref in refs:
        try:
            status = queries.current_status(bind, ref.delivery_id, tenant=tenant)
            if status is None:
                state.fail(ref.delivery_id, GONE)
            elif refusal(action.command, status) is not None:
                state.skip(Status(status).lower())
            else:
                yield FailedDelivery(ref.delivery_id, ref.destination_id, ref.absence_id, ref.tenant)
                continue
        except Exception as exc:  # one bad row: counted, and the job goes on
            log.warning("bulk action: delivery failed", delivery=ref.delivery_id, error=str(exc))
            state.fail(ref.delivery_id, str(exc)[:300] or type(exc).__name__)
        report(state)


def run(
    settings: Settings,
    bind: Bind,
    action: BulkAction,
    refs: list[queries.DeliveryRef],
    *,
    tenant: str | None,
    issued_by: str,
    rate: float = DEFAULT_RATE,
    stop: threading.Event | None = None,
    progress: Callable[[BulkProgress], None] | None = None,
) -> BulkProgress:
    """Acts on ``refs`` (from :func:`select`) as the module docstring says; ``progress`` is called
    after each delivery."""
    report = progress or (lambda _: None)
    state = BulkProgress(total=len(refs))
    report(state)

    def sent(count: int) -> None:
        state.sent = count
        report(state)

    state.sent = replay_failed(
        settings,
        _to_send(bind, action, refs, tenant, state, report),
        issued_by=issued_by,
        kind=action.command,
        rate=rate,
        stop=stop,
        progress=sent,
    )
    left = state.total - state.sent - state.failed - sum(state.skipped.values())
    if left > 0:
        state.skipped[STOPPED] = left
    state.phase, state.completed = "done", left == 0
    report(state)
    log.info(
        "bulk action done",
        action=action.value,
        issued_by=issued_by,
        total=state.total,
        sent=state.sent,
        skipped=state.skipped,
        failed=state.failed,
    )
    return state
