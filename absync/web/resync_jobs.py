"""Resync jobs of the API process: started by an operator (``POST /destinations/{id}/resync``, the
console's Resync dialog) or automatically when a disabled destination is enabled again.

A job runs :func:`processors.resync.run_resync` in a thread of this process; interrupted (process
stopped), it resumes from its checkpoint when the same resync is started again. One job per
destination at a time: starting one while another runs returns the running one.

Re-enabling catches up (:func:`catch_up_on_enable`): a disabled destination gets no deliveries (the
fan-out pauses it), so changes made meanwhile never reach it. On the transition disabled -> enabled
the job "re-enabled" resyncs the absences changed since the destination was disabled
(``changed_since = disabled_at``, recorded on the destination record; a destination disabled before
that was recorded gets a full resync): afterwards it holds what it should hold now. Enabling twice
starts nothing the second time (no transition), and a resync is idempotent anyway (deterministic
delivery ids the destinations dedupe on).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Literal

import structlog

from absync.web.jobs import Job, Jobs
from absync.web.models import ResyncIn, ResyncOut
from processors.resync import ResyncProgress, ResyncRequest, catch_up_request, enabled_again, run_resync
from processors.resync_filter import AbsenceScope
from schemas.destination import Destination
from streams.settings import Settings

log = structlog.get_logger(__name__)

Reason = Literal["operator", "re-enabled"]


def resync_request(body: ResyncIn, destination_id: str) -> ResyncRequest:
    """The resync an operator asked for (``POST /destinations/{id}/resync``, the console's dialog)."""
    since = body.changed_since
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    scope = AbsenceScope(body.ending_on_or_after, body.legal_entity, body.department)
    return ResyncRequest(destination_id, changed_since=since, scope=scope)


class ResyncJob(Job[ResyncProgress]):
    """One resync in a thread of this process."""

    def __init__(self, settings: Settings, request: ResyncRequest, reason: Reason) -> None:
        super().__init__(
            f"resync-{request.destination_id}",
            ResyncProgress(),
            destination=request.destination_id,
            reason=reason,
        )
        self.request = request
        self.reason: Reason = reason
        self._settings = settings

    @property
    def destination_id(self) -> str:
        return self.request.destination_id

    def work(self, report: Callable[[ResyncProgress], None], stop: threading.Event) -> ResyncProgress:
        """The checkpoint keeps what was done if it raises (reported by GET .../resync)."""
        return run_resync(self._settings, self.request, progress=report)

    def out(self) -> ResyncOut:
        running = self.running  # first: a job that ends meanwhile shows its final progress
        p = self.progress
        left = p.seconds_left if running or p.completed else None  # stopped early: no end to estimate
        return ResyncOut(
            destination_id=self.destination_id,
            reason=self.reason,
            parameters=self.request.parameters(),
            running=running,
            phase=p.phase,
            done=p.done,
            total=p.total,
            upserts=p.upserts,
            deletes=p.deletes,
            sent=p.sent,
            skipped=p.skipped,
            failed=p.failed,
            seconds=round(p.seconds, 1),
            rate=round(p.rate, 1),
            seconds_left=None if left is None else round(left),
            completed=p.completed,
            error=self.error,
        )


ResyncJobs = Jobs[ResyncJob]
"""The resyncs of this process, the latest per destination id."""


def catch_up_on_enable(
    settings: Settings, jobs: ResyncJobs, before: Destination | None, after: Destination
) -> ResyncJob | None:
    """Starts the catch-up resync if ``before -> after`` enables the destination again (see the
    module docstring); call it once the enabling write is acknowledged by Kafka."""
    if not enabled_again(before, after):
        return None
    assert before is not None
    request = catch_up_request(before)
    log.info(
        "destination enabled again: catch-up resync",
        destination=after.id,
        changed_since=before.disabled_at.isoformat() if before.disabled_at else None,
    )
    job, _ = jobs.start(request.destination_id, lambda: ResyncJob(settings, request, "re-enabled"))
    return job
