"""Tracked jobs of the API process, one helper for all of them: resyncs
(:mod:`absync.web.resync_jobs`), Recovers (:mod:`absync.web.recover_jobs`) and bulk actions on the
follow-up list (:mod:`absync.web.bulk_jobs`).

A :class:`Job` runs its work in a daemon thread of this process; its progress and its error are read
back while it runs and after it ended, until the process stops (jobs live in memory: each kind's
work is written so that a job cut short loses nothing, see its module). :class:`Jobs` holds the
latest jobs per key (a destination id, a tenant scope), a bounded number, and guarantees that at
most so many jobs of a key run (one for a destination's resync or Recover): starting one more
gives back the latest running one, untouched.

The routes' side is here too, so that they answer alike: :meth:`Jobs.start_or_refuse` (409 while a
job of the key runs) and :meth:`Jobs.latest` (404 before the first one). A job that sends one
command per delivery (a Recover, a bulk action) is a :class:`CommandJob`: its answer's common fields
come from :meth:`CommandJob.shown`.
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, Generic, Protocol, Self, TypeVar

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
        self.job_id = uuid.uuid4().hex
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


class CommandProgress(Protocol):
    """The progress of a job that sends one command per delivery (a Recover, a bulk action)."""

    @property
    def phase(self) -> str: ...
    @property
    def total(self) -> int: ...
    @property
    def sent(self) -> int: ...
    @property
    def skipped(self) -> dict[str, int]: ...
    @property
    def completed(self) -> bool: ...


CP = TypeVar("CP", bound=CommandProgress)


class CommandJob(Job[CP]):
    """A job that sends one command per delivery (a Recover, a bulk action): ``send(stop=...,
    progress=...)`` does the work (a service function with its arguments bound, the operator's name
    as ``issued_by`` among them), and :meth:`shown` gives the fields its answer shares with the
    others of its kind."""

    def __init__(
        self, name: str, progress: CP, send: Callable[..., CP], *, started_by: str, **log_fields: object
    ) -> None:
        super().__init__(name, progress, **log_fields)
        self.started_by = started_by
        self._send = send

    def work(self, report: Callable[[CP], None], stop: threading.Event) -> CP:
        return self._send(stop=stop, progress=report)

    def shown(self, progress: CP, reasons: Mapping[str, str]) -> dict[str, Any]:
        """Who started the job and when; whether it runs; its phase ("done" once it ended, whatever
        the work last reported); ``done`` (commands sent) of ``total``; ``skipped`` by reason, with
        what each reason means (``reasons``; a reason not there is shown as itself); ``completed``
        (the work ended by itself without an error) and the error. ``progress`` is :attr:`progress`,
        read once by the caller for all of its answer."""
        p = progress
        running = self.running
        return {
            "started_by": self.started_by,
            "started_at": self.started_at,
            "running": running,
            "phase": "done" if not running else p.phase,
            "total": p.total,
            "done": p.sent,
            "skipped": p.skipped,
            "skip_reasons": {reason: reasons.get(reason, reason) for reason in p.skipped},
            "completed": p.completed and self.error is None,
            "error": self.error,
        }


J = TypeVar("J", bound=Job[Any])


class Jobs(Generic[J]):
    """The jobs of one kind in this process, by key: at most ``running_at_most`` running per key
    (one by default: a destination's resync or Recover), and the latest ``keep`` per key (the
    running ones on top; the oldest finished ones are forgotten first)."""

    def __init__(self, *, running_at_most: int = 1, keep: int = 1) -> None:
        if not 1 <= running_at_most <= keep:
            raise ValueError("need 1 <= running_at_most <= keep")
        self._running_at_most = running_at_most
        self._keep = keep
        self._jobs: dict[str, list[J]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, job_id: str | None = None) -> J | None:
        """The key's latest job, or its job ``job_id``; None if there is none (or it is forgotten)."""
        with self._lock:
            jobs = self._jobs.get(key, [])
            if job_id is None:
                return jobs[-1] if jobs else None
            return next((job for job in jobs if job.job_id == job_id), None)

    def start(
        self, key: str, make: Callable[[], J], *, before_start: Callable[[J], None] | None = None
    ) -> tuple[J, bool]:
        """Starts ``make()`` under ``key`` unless ``running_at_most`` jobs of that key run:
        ``(job, True)`` when started, ``(the latest running job, False)`` otherwise. ``before_start``
        (an audit record) is called with the new job before its thread starts; if it raises, the
        job neither starts nor is kept."""
        with self._lock:
            jobs = self._jobs.setdefault(key, [])
            running = [job for job in jobs if job.running]
            if len(running) >= self._running_at_most:
                return running[-1], False
            job = make()
            if before_start is not None:
                before_start(job)
            jobs.append(job.start())
            while len(jobs) > self._keep:
                finished = next((old for old in jobs if not old.running), None)
                if finished is None:
                    break
                jobs.remove(finished)
            return job, True

    def start_or_refuse(
        self,
        key: str,
        make: Callable[[], J],
        busy: Callable[[J], str],
        *,
        before_start: Callable[[J], None] | None = None,
    ) -> J:
        """:meth:`start`, or 409 with ``busy(latest running job)`` as the detail when it is refused."""
        job, started = self.start(key, make, before_start=before_start)
        if not started:
            raise HTTPException(status.HTTP_409_CONFLICT, busy(job))
        return job

    def stop_all(self, deadline: float) -> list[J]:
        """Asks every running job to end early and waits for them until ``deadline`` (a
        ``time.monotonic()`` value); returns those still running then (the process is stopping)."""
        with self._lock:
            running = [job for jobs in self._jobs.values() for job in jobs if job.running]
        for job in running:
            job.stop()
        return [job for job in running if not job.wait(max(0.0, deadline - time.monotonic()))]

    def latest(self, key: str, what: str, job_id: str | None = None) -> J:
        """:meth:`get`, or 404 ``no such <what>``."""
        job = self.get(key, job_id)
        if job is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no such {what}")
        return job
