"""What the web routes share, in a module of its own: :class:`AppState`, built once by
:func:`absync.web.app.create_app` and read by every route through :func:`app_state`.

It imports no route module, so the app, the API routes and the console all import it without an
import circle.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka import Producer
from fastapi import Request
from prometheus_client.registry import CollectorRegistry
from sqlalchemy.engine import Engine

from absync.services.destinations import DestinationService
from absync.web.bulk_jobs import BulkJobs
from absync.web.jobs import Job
from absync.web.recover_jobs import RecoverJobs
from absync.web.resync_jobs import ResyncJobs
from streams.destinations import DestinationTable
from streams.secrets import SecretBox
from streams.settings import Settings

log = structlog.get_logger(__name__)

JOBS_STOP_SECONDS = 10.0
"""How long a stopping web process waits for its jobs to end (well within the server's graceful
shutdown)."""


@dataclass
class AppState:
    """One per application (process): the projection database, one idempotent producer for
    commands (used under ``producer_lock``), the destinations table read from Kafka, the writes to
    it, the secret box and the metrics registry."""

    settings: Settings
    engine: Engine
    producer: Producer
    destinations: DestinationTable
    destination_writes: DestinationService
    box: SecretBox
    metrics: CollectorRegistry
    producer_lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    """Set when the server stops: open event streams end."""
    resync_jobs: ResyncJobs = field(default_factory=ResyncJobs)
    """The resyncs of this process (by hand, or the catch-up of an enable), newest per destination."""
    recover_jobs: RecoverJobs = field(default_factory=RecoverJobs)
    """The Recovers started by this process, the newest per destination id."""
    bulk_jobs: BulkJobs = field(default_factory=BulkJobs)
    """The bulk actions on the follow-up list started by this process, the newest per tenant scope."""

    def stop_jobs(self, seconds: float = JOBS_STOP_SECONDS) -> None:
        """At shutdown: asks every running job (resync, Recover, bulk) to end early and waits for them,
        ``seconds`` in all. A job ends where it may stop: what it sent stays sent, a resync keeps its
        checkpoint (``absync resync --resume`` goes on), the rest is the operator's to start again.
        Those still running then are logged; their threads end with the process."""
        deadline = time.monotonic() + seconds
        left: list[Job[Any]] = [
            *self.resync_jobs.stop_all(deadline),
            *self.recover_jobs.stop_all(deadline),
            *self.bulk_jobs.stop_all(deadline),
        ]
        if left:
            log.warning("jobs still running at shutdown", jobs=[job.job_id for job in left])


def app_state(request: Request) -> AppState:
    """The state of the application serving ``request``."""
    state: AppState = request.app.state.absync
    return state
