"""Resyncs started from the API (``POST /api/v1/destinations/{id}/resync``), each in a thread of the
API process; see :mod:`processors.resync` for what a resync does.

Interrupted (the process stops), a resync resumes from its checkpoint when started again; a failed
one reports its error through :meth:`ResyncJob.out` and keeps what it had done.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import structlog

from absync.web.models import ResyncOut
from processors.resync import ResyncProgress, ResyncRequest, run_resync
from streams.settings import Settings

log = structlog.get_logger(__name__)


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
