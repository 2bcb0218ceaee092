"""Personal data in the view: the payload retention and erasures (docs/privacy.md).

- **Retention** (``ABSYNC_PAYLOAD_RETENTION``, default 90 days): an attempt older than it keeps its
  outcome (number, time, duration, method, status code, error) and loses its payloads: request and
  response headers and bodies, the per-call summaries, and the path of its URL (a calendar URL names
  the mailbox). :func:`drop_old_payloads` sweeps the view; :meth:`Privacy.scrub` applies the same to
  every fact the projector stores, so a rebuild (or a late fact) never brings an old payload back.
- **Erasure** (:func:`erase_from_view`): the employee's deliveries keep their status and dates, and
  lose the name, the email, the employee id (replaced by the erasure's subject id) and every payload.
  The ledger (table ``erasures``) holds a keyed hash of the email (:func:`subject_id`), never the
  email; :meth:`Privacy.scrub` checks every incoming fact against it, so replaying ``delivery-status``
  (``absync projection rebuild``) cannot show the employee again. The ledger lives in the database
  only, like tokens and the audit trail: a new, empty database does not know past erasures.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine

from projections.db import attempts, deliveries, destination_audit, erasures, writer
from schemas.delivery import Attempt, DeliveryStatus
from streams.settings import Settings

log = structlog.get_logger(__name__)

ERASED = "(erased)"
"""What an erased employee's name, and the email inside a kept error text, become."""
SWEEP_BATCH = 500


def normal_email(email: str) -> str:
    return email.strip().casefold()


def subject_keys(settings: Settings) -> list[bytes]:
    """The keys of the subject ids: one per ``ABSYNC_SECRET_KEY`` entry (newest first), derived so
    the id reveals nothing about the key. An erasure is found again after a key rotation as long as
    the old key stays listed (as it must, to decrypt secrets written before the rotation)."""
    keys = [k.strip() for k in settings.secret_key.get_secret_value().split(",") if k.strip()]
    return [hashlib.sha256(b"absync erasure subject|" + key.encode()).digest() for key in keys]


def subject_id(key: bytes, email: str) -> str:
    """The opaque id of an employee's email (HMAC-SHA256; not reversible without the key, so the audit
    trail cannot be searched with a list of addresses by someone who reads only the database)."""
    return "sub_" + hmac.new(key, normal_email(email).encode(), hashlib.sha256).hexdigest()[:40]


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL: where it went, without the path that may name a person."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def stripped(attempt: Attempt) -> Attempt:
    """The attempt without its payloads (see the module docstring)."""
    return replace(
        attempt,
        request_url=origin_of(attempt.request_url),
        request_headers={},
        request_body="",
        response_headers={},
        response_body=None,
        calls=[],
    )


def _without(text: str | None, email: str) -> str | None:
    if text is None:
        return None
    lowered, target = text.casefold(), normal_email(email)
    if target not in lowered:
        return text
    out, start = [], 0
    while (found := lowered.find(target, start)) >= 0:
        out += [text[start:found], ERASED]
        start = found + len(target)
    return "".join([*out, text[start:]])


DROPPED_VALUES: dict[str, Any] = {
    "request_headers": {},
    "request_body": "",
    "response_headers": {},
    "response_body": None,
    "calls": [],
    "payload_dropped": True,
}


@dataclass
class Privacy:
    """What the projector applies to every fact before storing it (see the module docstring)."""

    keys: list[bytes]
    retention: dt.timedelta
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)

    @classmethod
    def from_settings(cls, settings: Settings) -> Privacy:
        return cls(subject_keys(settings), dt.timedelta(seconds=settings.payload_retention))

    def scrub(
        self, conn: Connection, facts: Sequence[DeliveryStatus]
    ) -> tuple[list[DeliveryStatus], set[str]]:
        """``facts`` with erased employees and payloads past the retention removed, and the status
        ids of the facts whose attempt lost its payloads."""
        if not facts:
            return [], set()
        ledger = {
            (row.subject, row.tenant)
            for row in conn.execute(sa.select(erasures.c.subject, erasures.c.tenant))
        }
        cutoff = self.clock() - self.retention
        out: list[DeliveryStatus] = []
        dropped: set[str] = set()
        for fact in facts:
            subject = self._erased(fact, ledger) if ledger else None
            if subject is not None and fact.employee_email is not None:
                fact = erased_fact(fact, subject, fact.employee_email)
            elif fact.attempt_record is not None and fact.attempt_record.started_at < cutoff:
                fact = replace(fact, attempt_record=stripped(fact.attempt_record))
            else:
                out.append(fact)
                continue
            if fact.attempt_record is not None:
                dropped.add(fact.status_id)
            out.append(fact)
        return out, dropped

    def _erased(self, fact: DeliveryStatus, ledger: set[tuple[str, str | None]]) -> str | None:
        if not fact.employee_email:
            return None
        for key in self.keys:
            subject = subject_id(key, fact.employee_email)
            if (subject, None) in ledger or (subject, fact.tenant) in ledger:
                return subject
        return None


def erased_fact(fact: DeliveryStatus, subject: str, email: str) -> DeliveryStatus:
    record = fact.attempt_record
    return replace(
        fact,
        employee_id=subject,
        employee_name=ERASED,
        employee_email=None,
        error=_without(fact.error, email),
        attempt_record=replace(stripped(record), error=_without(record.error, email)) if record else None,
    )


def drop_old_payloads(engine: Engine, cutoff: dt.datetime) -> int:
    """Drops the payloads of the attempts started before ``cutoff`` (batches of SWEEP_BATCH, one
    transaction each); returns how many attempts it changed. Idempotent."""
    changed = 0
    while True:
        with writer(engine.connect()) as conn, conn.begin():
            rows = conn.execute(
                sa.select(attempts.c.status_id, attempts.c.request_url)
                .where(attempts.c.started_at < cutoff, attempts.c.payload_dropped.is_(False))
                .limit(SWEEP_BATCH)
            ).all()
            for status_id, url in rows:
                conn.execute(
                    attempts.update()
                    .where(attempts.c.status_id == status_id)
                    .values(request_url=origin_of(url), **DROPPED_VALUES)
                )
        changed += len(rows)
        if len(rows) < SWEEP_BATCH:
            if changed:
                log.info("payloads past their retention dropped from the view", attempts=changed)
            return changed


@dataclass(frozen=True, slots=True)
class ViewErasure:
    subject: str
    deliveries: int
    destinations: list[str]


def erase_from_view(
    engine: Engine,
    keys: list[bytes],
    email: str,
    *,
    actor: str,
    tenant: str | None = None,
    absences: int = 0,
) -> ViewErasure:
    """Records the erasure in the ledger and removes the employee's personal data from the view, in
    one transaction; one audit record per destination that had deliveries of the employee (action
    ``erase``, the subject id and counts: never the email)."""
    subject = subject_id(keys[0], email)
    now = dt.datetime.now(dt.UTC)
    target = normal_email(email)
    with writer(engine.connect()) as conn, conn.begin():
        query = sa.select(
            deliveries.c.delivery_id,
            deliveries.c.destination_id,
            deliveries.c.tenant,
            deliveries.c.last_error,
            deliveries.c.error_seen,
        ).where(sa.func.lower(deliveries.c.employee_email) == target)
        if tenant is not None:
            query = query.where(deliveries.c.tenant == tenant)
        found = conn.execute(query).all()
        for delivery_id, _, _, last_error, error_seen in found:
            conn.execute(
                deliveries.update()
                .where(deliveries.c.delivery_id == delivery_id)
                .values(
                    employee_id=subject,
                    employee_name=ERASED,
                    employee_email=None,
                    last_error=_without(last_error, email),
                    error_seen=_without(error_seen, email),
                )
            )
            for status_id, url, error in conn.execute(
                sa.select(attempts.c.status_id, attempts.c.request_url, attempts.c.error).where(
                    attempts.c.delivery_id == delivery_id
                )
            ).all():
                conn.execute(
                    attempts.update()
                    .where(attempts.c.status_id == status_id)
                    .values(request_url=origin_of(url), error=_without(error, email), **DROPPED_VALUES)
                )
        conn.execute(
            erasures.insert().values(
                subject=subject, tenant=tenant, actor=actor, at=now, absences=absences, deliveries=len(found)
            )
        )
        per_destination: dict[tuple[str, str], int] = {}
        for _, destination_id, row_tenant, _, _ in found:
            per_destination[(destination_id, row_tenant)] = (
                per_destination.get((destination_id, row_tenant), 0) + 1
            )
        for (destination_id, row_tenant), count in sorted(per_destination.items()):
            conn.execute(
                destination_audit.insert().values(
                    destination_id=destination_id,
                    tenant=row_tenant,
                    actor=actor,
                    action="erase",
                    changes={"subject": subject, "deliveries": count},
                    at=now,
                )
            )
    return ViewErasure(subject, len(found), sorted({d for d, _ in per_destination}))
