"""Erasure of one employee's personal data: the view, then the compacted topics (docs/privacy.md).

Used by ``absync erase --employee EMAIL`` and ``POST /api/v1/erasures``. The order makes a crash
harmless: the view's ledger first (from then on no fact about the employee is shown, whatever is
replayed), then the tombstones; running it again is idempotent (another ledger entry, the same
tombstones). Nothing here logs or records the email: the audit trail and the logs carry the
subject id (:func:`projections.privacy.subject_id`).
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from sqlalchemy.engine import Engine

from processors.erasure import erase_from_topics, find_absences
from projections.privacy import erase_from_view, subject_keys
from streams.destinations import DestinationTable
from streams.settings import Settings

log = structlog.get_logger(__name__)

EMAIL_MAX = 320


class ErasureRequestError(ValueError):
    """The email given is not one (empty, too long, no @, a control character)."""


@dataclass(frozen=True, slots=True)
class Erasure:
    subject: str
    """The opaque id the audit trail names (a keyed hash of the email, never the email)."""
    absences: int
    deliveries: int
    tombstones: int
    destinations: list[str]


def checked_email(email: str) -> str:
    text = email.strip()
    if (
        not text
        or len(text) > EMAIL_MAX
        or "@" not in text
        or any(ord(c) < 32 or ord(c) == 127 for c in text)
    ):
        raise ErasureRequestError("not an email address")
    return text


def erase_employee(
    settings: Settings,
    engine: Engine,
    table: DestinationTable,
    email: str,
    *,
    actor: str,
    tenant: str | None = None,
) -> Erasure:
    """Erases the employee of ``email`` (of ``tenant`` only, if given): see the module docstring."""
    email = checked_email(email)
    found = find_absences(settings, email, tenant)
    view = erase_from_view(
        engine, subject_keys(settings), email, actor=actor, tenant=tenant, absences=len(found)
    )
    topics = erase_from_topics(settings, found, table.all())
    log.info(
        "employee erased",
        subject=view.subject,
        tenant=tenant,
        actor=actor,
        absences=len(found),
        deliveries=view.deliveries,
        tombstones=topics.tombstones,
    )
    return Erasure(view.subject, len(found), view.deliveries, topics.tombstones, view.destinations)
