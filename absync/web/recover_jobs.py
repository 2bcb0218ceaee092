"""Recovers started from the API (``POST /api/v1/destinations/{id}/recover``), each a
:class:`absync.web.jobs.Job` of the API process; see :mod:`absync.services.recover` for what a
Recover does and guarantees.

A job is tracked in memory (like a resync): its progress and result are read back through
:meth:`RecoverJob.out` until the process stops. Interrupted, nothing is lost: the deliveries not
yet re-sent are still in Error and a new Recover with the same ``since`` sends them.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import replace

from sqlalchemy.engine import Engine

from absync.services.recover import SKIP_REASONS, RecoverProgress, recover
from absync.web.jobs import Job, Jobs
from absync.web.models import RecoverOut
from streams.settings import Settings


class RecoverJob(Job[RecoverProgress]):
    """A Recover running in a thread of this API process."""

    def __init__(
        self, settings: Settings, engine: Engine, destination_id: str, since: dt.datetime, started_by: str
    ) -> None:
        super().__init__(f"recover-{destination_id}", RecoverProgress(), destination=destination_id)
        self.destination_id = destination_id
        self.since = since
        self.started_by = started_by
        self._settings = settings
        self._engine = engine

    def snapshot(self, progress: RecoverProgress) -> RecoverProgress:
        return replace(progress, skipped=dict(progress.skipped))

    def work(self, report: Callable[[RecoverProgress], None], stop: threading.Event) -> RecoverProgress:
        return recover(
            self._settings,
            self._engine,
            self.destination_id,
            self.since,
            issued_by=self.started_by,
            stop=stop,
            progress=report,
        )

    def out(self) -> RecoverOut:
        p = self.progress
        running = self.running
        return RecoverOut(
            destination_id=self.destination_id,
            since=self.since,
            started_by=self.started_by,
            started_at=self.started_at,
            running=running,
            phase="done" if not running else p.phase,
            done=p.sent,
            total=p.total,
            skipped=p.skipped,
            skip_reasons={reason: SKIP_REASONS[reason] for reason in p.skipped},
            completed=p.completed and self.error is None,
            error=self.error,
        )


RecoverJobs = Jobs[RecoverJob]
"""The Recovers of this process, the latest per destination id."""
