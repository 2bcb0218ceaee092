"""Recovers started from the API (``POST /api/v1/destinations/{id}/recover``), each a
:class:`absync.web.jobs.Job` of the API process; see :mod:`absync.services.recover` for what a
Recover does and guarantees.

A job is tracked in memory (like a resync): its progress and result are read back through
:meth:`RecoverJob.out` until the process stops. Interrupted, nothing is lost: the deliveries not
yet re-sent are still in Error and a new Recover with the same ``since`` sends them.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import replace

from sqlalchemy.engine import Engine

from absync.services.recover import SKIP_REASONS, RecoverProgress, recover
from absync.web.jobs import CommandJob, Jobs
from absync.web.models import RecoverOut
from streams.settings import Settings


class RecoverJob(CommandJob[RecoverProgress]):
    """A Recover running in a thread of this API process."""

    def __init__(
        self, settings: Settings, engine: Engine, destination_id: str, since: dt.datetime, started_by: str
    ) -> None:
        super().__init__(
            f"recover-{destination_id}",
            RecoverProgress(),
            functools.partial(recover, settings, engine, destination_id, since, issued_by=started_by),
            started_by=started_by,
            destination=destination_id,
        )
        self.destination_id = destination_id
        self.since = since

    def snapshot(self, progress: RecoverProgress) -> RecoverProgress:
        return replace(progress, skipped=dict(progress.skipped))

    def out(self) -> RecoverOut:
        return RecoverOut(
            destination_id=self.destination_id, since=self.since, **self.shown(self.progress, SKIP_REASONS)
        )


RecoverJobs = Jobs[RecoverJob]
"""The Recovers of this process, the latest per destination id."""
