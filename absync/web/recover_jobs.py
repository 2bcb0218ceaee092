"""Recovers started from the API (``POST /api/v1/destinations/{id}/recover``), each in a thread
of the API process; see :mod:`absync.services.recover` for what a Recover does and guarantees.

A job is tracked in memory (like a resync): its progress and result are read back through
:meth:`RecoverJob.out` until the process stops. Interrupted, nothing is lost: the deliveries not
yet re-sent are still in Error and a new Recover with the same ``since`` sends them.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import replace

import structlog
from sqlalchemy.engine import Engine

from absync.services.recover import SKIP_REASONS, RecoverProgress, recover
from absync.web.models import RecoverOut
from streams.settings import Settings

log = structlog.get_logger(__name__)


class RecoverJob:
    """A Recover running in a thread of this API process."""

    def __init__(
        self, settings: Settings, engine: Engine, destination_id: str, since: dt.datetime, started_by: str
    ) -> None:
        self.destination_id = destination_id
        self.since = since
        self.started_by = started_by
        self.started_at = dt.datetime.now(dt.UTC)
        self.progress = RecoverProgress()
        self.error: str | None = None
        self._settings = settings
        self._engine = engine
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"recover-{destination_id}", daemon=True)

    def start(self) -> RecoverJob:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Asks the job to stop after the command being sent (the rest stays in Error)."""
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        def update(progress: RecoverProgress) -> None:
            self.progress = replace(progress, skipped=dict(progress.skipped))

        try:
            self.progress = recover(
                self._settings,
                self._engine,
                self.destination_id,
                self.since,
                issued_by=self.started_by,
                stop=self._stop,
                progress=update,
            )
        except Exception as exc:  # reported by GET .../recover; what was sent stays sent
            log.exception("recover failed", destination=self.destination_id)
            self.error = str(exc)

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
