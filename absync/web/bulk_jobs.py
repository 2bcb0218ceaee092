"""Bulk actions started from the API (``POST /api/v1/deliveries/bulk/retry``, ``.../mark-processed``),
each a :class:`absync.web.jobs.Job` of the API process; see :mod:`absync.services.bulk` for what
one does and guarantees.

At most :data:`RUNNING_AT_MOST` jobs run per tenant scope (:func:`scope_key`: a tenant's tokens
share one, the tokens of every tenant another); one more is refused until one is done. Tracked in
memory like a Recover, the latest :data:`KEPT` per scope: a job's progress and result are read back
through :meth:`BulkJob.out` (by its id, or the scope's latest) until the process stops;
interrupted, the deliveries not acted on are as they were, and the same action on the same filter
acts on them.
"""

from __future__ import annotations

import functools
from dataclasses import replace

from sqlalchemy.engine import Engine

from absync.services import bulk
from absync.services.bulk import BulkAction, BulkProgress
from absync.web.jobs import CommandJob, Jobs
from absync.web.models import BulkOut
from projections import queries
from streams.settings import Settings

RUNNING_AT_MOST = 4
"""Bulk actions running at once per tenant scope (each up to 10,000 commands, rate-limited)."""
KEPT = 20
"""Bulk actions whose result is kept per tenant scope."""


def scope_key(tenant: str | None) -> str:
    """The key of a principal's bulk jobs: its tenant, or every tenant."""
    return "*" if tenant is None else f"tenant:{tenant}"


class BulkJob(CommandJob[BulkProgress]):
    """A bulk action running in a thread of this API process."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        action: BulkAction,
        where: queries.DeliveryFilter,
        refs: list[queries.DeliveryRef],
        *,
        tenant: str | None,
        started_by: str,
    ) -> None:
        super().__init__(
            f"bulk-{action.value}",
            BulkProgress(total=len(refs)),
            functools.partial(bulk.run, settings, engine, action, refs, tenant=tenant, issued_by=started_by),
            started_by=started_by,
            action=action.value,
        )
        self.action = action
        self.where = where
        self.tenant = tenant

    def snapshot(self, progress: BulkProgress) -> BulkProgress:
        return replace(progress, skipped=dict(progress.skipped), failures=list(progress.failures))

    def out(self) -> BulkOut:
        p = self.progress
        return BulkOut(
            job_id=self.job_id,
            action="retry" if self.action is BulkAction.RETRY else "mark-processed",
            filters=bulk.filter_fields(self.where),
            failed=p.failed,
            failures=p.failures,
            **self.shown(p, bulk.skip_reasons(self.action)),
        )


class BulkJobs(Jobs[BulkJob]):
    """The bulk actions of this process, by tenant scope (:func:`scope_key`)."""

    def __init__(self) -> None:
        super().__init__(running_at_most=RUNNING_AT_MOST, keep=KEPT)
