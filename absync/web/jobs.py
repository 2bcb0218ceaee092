"""Tracked jobs of the API process, one helper for all of them: resyncs
(:mod:`absync.web.resync_jobs`), Recovers (:mod:`absync.web.recover_jobs`) and bulk actions on the
follow-up list (:mod:`absync.web.bulk_jobs`).

A :class:`Job` runs its work in a daemon thread of this process; its progress and its error are read
back while it runs and after it ended, until the process stops (jobs live in memory: each kind's
work is written so that a job cut short loses nothing, see its module). :class:`Jobs` holds the
latest job per key (a destination id, a tenant scope) and guarantees that at most one job per key
runs: starting one while another of the same key runs gives back the running one, untouched.

The routes' side is here too, so that they answer alike: :meth:`Jobs.start_or_refuse` (409 while a
job of the key runs) and :meth:`Jobs.latest` (404 before the first one).
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Generic, Self, TypeVar

import structlog
from fastapi import HTTPException, status

log = structlog.get_logger(__name__)

P = TypeVar("P")


class Job(ABC, Generic[P]):
    """One job of kind ``P`` (its progress type) in a thread of this process."""

    def __init__(self, name: str, progress: P, **log_fields: object) -> None:
        self.progress: P = progress
        """The latest progress reported (a snapshot: the work goes on changing its own)."""
        self.error: str | None = None
        """Why the work raised, if it did (what it had done stays done)."""
        self.started_at = dt.datetime.now(dt.UTC)
        self._log_fields = log_fields
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @abstractmethod
    def work(self, report: Callable[[P], None], stop: threading.Event) -> P:
        """Does the job; calls ``report`` with its progress as it goes, returns the final progress,
        and ends early once ``stop`` is set."""

    def snapshot(self, progress: P) -> P:
        """The copy kept of a reported progress (shallow; override to copy mutable fields)."""
        return copy.copy(progress)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Asks the work to end early (it decides where it may stop)."""
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the job has ended (for the tests and shutdown)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _report(self, progress: P) -> None:
        self.progress = self.snapshot(progress)

    def _run(self) -> None:
        try:
            self.progress = self.work(self._report, self._stop)
        except Exception as exc:  # reported by the job's GET route; what was done stays done
            log.exception("job failed", job=self._thread.name, **self._log_fields)
            self.error = str(exc)


J = TypeVar("J", bound=Job[Any])


class Jobs(Generic[J]):
    """The jobs of one kind in this process: the latest per key, at most one running per key."""

    def __init__(self) -> None:
        self._jobs: dict[str, J] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> J | None:
        with self._lock:
            return self._jobs.get(key)

    def start(
        self, key: str, make: Callable[[], J], *, before_start: Callable[[J], None] | None = None
    ) -> tuple[J, bool]:
        """Starts ``make()`` under ``key`` unless a job of that key runs: ``(job, True)`` when started,
        ``(the running job, False)`` otherwise. ``before_start`` (an audit record) is called with the
        new job before its thread starts; if it raises, the job neither starts nor replaces the
        key's previous one."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.running:
                return job, False
            job = make()
            if before_start is not None:
                before_start(job)
            self._jobs[key] = job.start()
            return job, True

    def start_or_refuse(
        self,
        key: str,
        make: Callable[[], J],
        busy: Callable[[J], str],
        *,
        before_start: Callable[[J], None] | None = None,
    ) -> J:
        """:meth:`start`, or 409 with ``busy(running job)`` as the detail while one of ``key`` runs."""
        job, started = self.start(key, make, before_start=before_start)
        if not started:
            raise HTTPException(status.HTTP_409_CONFLICT, busy(job))
        return job

    def latest(self, key: str, what: str) -> J:
        """The key's latest job, or 404 ``no such <what>`` before the first one."""
        job = self.get(key)
        if job is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no such {what}")
        return job
