"""The ``health`` component: turns the projected destination health into operator alerts, and
disables a destination that has failed without a single success for ``ABSYNC_AUTO_DISABLE_AFTER``.

Where the health comes from
    :mod:`projections.health`: the projection keeps, per destination, its first failure since the
    last success (``failing_since``), from the delivery-status facts, in the same transaction as the
    view. This component reads it; it writes nothing the projection writes.

Every ``ABSYNC_HEALTH_INTERVAL`` (a tick, :meth:`HealthMonitor.tick`, with the time from an injectable
clock):

1. *Auto-disable*: an enabled destination whose failing period began ``ABSYNC_AUTO_DISABLE_AFTER`` ago
   or more (default 5 days, as Svix), with no success since, is disabled by a normal destination write
   through :class:`absync.services.destinations.DestinationService` (as the API and the CLI write): a
   new revision on the ``destinations`` topic (``enabled`` false, ``updated_by``
   :data:`AUTO_DISABLE_ACTOR`) and its audit entry (action ``auto-disable``), so every worker, the
   fan-out and the API see it as they see an operator's. It keeps its secrets and settings; an
   operator enables it again (its failing period then starts afresh, see :mod:`projections.health`).
2. *Record*: a disabled revision written by :data:`AUTO_DISABLE_ACTOR` and not recorded yet gets a
   ``disabled`` health event, once (``health_notices.disabled_revision``): also after a crash between
   the write and the record.
3. *Transitions*: a destination that starts failing gets a ``failing`` event, one that succeeds again
   after failing a ``recovered`` event (``health_notices`` keeps what operators were last told, outside
   the view tables, so a rebuild of the view tells nobody twice).
4. *Send*: pending events go to the alert targets (:mod:`absync.health.alerts`); a target that fails
   is tried again later (backoff, at most :data:`MAX_TRIES` times), one that took the event is not
   sent it again. Without targets an event is only recorded (``none``).

One health component per database (like the projection). Events are history too: the API and the
console show them on the destination's page.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine

from absync.health import alerts
from absync.health.notify import HealthEvent, Notifier, NotifyError
from absync.services.destinations import DestinationNotFound, DestinationService
from connectors.egress import EgressPolicy
from connectors.registry import receives_changes
from projections.db import (
    destination_health,
    engine_for,
    health_events,
    health_notices,
    migrate,
    writer,
)
from schemas.destination import Destination
from streams.destinations import DestinationTable
from streams.secrets import SecretBox
from streams.settings import Settings
from streams.threads import run_in_thread

log = structlog.get_logger(__name__)

AUTO_DISABLE_ACTOR = "absync:auto-disable"
"""``updated_by`` of the revision that disables a failing destination, and the audit's actor."""
MAX_TRIES = 12
Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _backoff(tries: int) -> dt.timedelta:
    return dt.timedelta(seconds=min(3600, 15 * 2 ** max(0, tries - 1)))


def _fmt(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


class HealthMonitor:
    """See the module docstring. ``clock`` gives the time of a tick (tests move it days ahead)."""

    name = "health"

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        destinations: DestinationTable | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.settings = settings
        self.engine = engine or engine_for(settings)
        self.destinations = destinations or DestinationTable(settings)
        self._own_table = destinations is None
        self.service = DestinationService(settings, self.destinations, self.engine)
        self.clock = clock
        self.box = SecretBox.from_settings(settings)
        self.egress = EgressPolicy.from_settings(settings)

    async def run(self, stop: asyncio.Event) -> None:
        await run_in_thread(migrate, self.engine, name="health-migrate")
        self.destinations.start()
        await run_in_thread(self.destinations.wait_ready, name="health-start")
        try:
            while not stop.is_set():
                await self.tick()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(1.0, self.settings.health_interval))
        finally:
            if self._own_table:
                self.destinations.close()

    async def tick(self, now: dt.datetime | None = None) -> None:
        """One round: disable, record, notice transitions, send (see the module docstring)."""
        now = now or self.clock()
        await run_in_thread(self._decide, now, name="health-tick")
        await self.send_pending(now)

    # -- deciding (blocking: Kafka write, database) ---------------------------------------------

    def _decide(self, now: dt.datetime) -> None:
        with self.engine.connect() as conn:
            rows = {
                r["destination_id"]: dict(r) for r in conn.execute(sa.select(destination_health)).mappings()
            }
        for destination in self.destinations.all():
            row = rows.get(destination.id)
            if row is not None and self._due_for_disable(destination, row, now):
                self._disable(destination, row)
        with self.engine.connect() as conn:
            notices = {
                r["destination_id"]: dict(r) for r in conn.execute(sa.select(health_notices)).mappings()
            }
        for destination in self.destinations.all():
            row = rows.get(destination.id)
            if _has_news(destination, row, notices.get(destination.id)):  # a write lock only then
                with writer(self.engine.connect()) as conn, conn.begin():
                    self._record(conn, destination, row, now)

    def _due_for_disable(self, destination: Destination, row: dict[str, Any], now: dt.datetime) -> bool:
        since, success = row["failing_since"], row["last_success_at"]
        return bool(
            destination.enabled
            and receives_changes(destination)
            and self.settings.auto_disable_after > 0
            and since is not None
            and (success is None or success < since)
            and now - since >= dt.timedelta(seconds=self.settings.auto_disable_after)
        )

    def _disable(self, destination: Destination, row: dict[str, Any]) -> None:
        """The write: the service keeps the secrets, counts the revision, reads it back, audits it.
        A destination an operator changed meanwhile (disabled already) gets no write."""
        try:
            written = self.service.update(
                destination.id,
                lambda current: dataclasses.replace(current, enabled=False, secrets={}),
                actor=AUTO_DISABLE_ACTOR,
                action="auto-disable",
            )
        except DestinationNotFound:
            return  # deleted meanwhile
        if written.published:
            log.warning(
                "destination disabled: failing without a success",
                destination=destination.id,
                failing_since=row["failing_since"].isoformat(),
                revision=written.destination.revision,
            )

    def _record(
        self, conn: Connection, destination: Destination, row: dict[str, Any] | None, now: dt.datetime
    ) -> None:
        notice = (
            conn.execute(
                sa.select(health_notices)
                .where(health_notices.c.destination_id == destination.id)
                .with_for_update()
            )
            .mappings()
            .first()
        )
        state: dict[str, Any] = (
            dict(notice) if notice else {"state": "healthy", "failing_since": None, "disabled_revision": 0}
        )
        before = dict(state)
        failing = row is not None and row["failing_since"] is not None
        if failing and row is not None and state["state"] != "failing":
            error = (row["last_error"] or "")[:500]
            summary = f"is failing since {_fmt(row['failing_since'])}: {error}"
            self._event(conn, destination, "failing", row["failing_since"], summary)
            state.update(state="failing", failing_since=row["failing_since"])
        elif not failing and state["state"] == "failing":
            success = row["last_success_at"] if row else None
            if (
                success is not None
                and state["failing_since"] is not None
                and success >= state["failing_since"]
            ):
                self._event(
                    conn, destination, "recovered", success, f"recovered: delivered at {_fmt(success)}"
                )
            state.update(state="healthy", failing_since=None)
        if (
            not destination.enabled
            and destination.updated_by == AUTO_DISABLE_ACTOR
            and destination.revision > state["disabled_revision"]
        ):
            since = row["failing_since"] if row else None
            reason = (
                f"failing without a success since {_fmt(since)}" if since else "failing without a success"
            )
            days = self.settings.auto_disable_after / 86400
            summary = (
                f"was disabled automatically: {reason} (limit {days:g} days). Enable it again once fixed."
            )
            self._event(conn, destination, "disabled", destination.updated_at, summary)
            state["disabled_revision"] = destination.revision
        if state == before:
            return
        values = {k: state[k] for k in ("state", "failing_since", "disabled_revision")} | {"updated_at": now}
        if notice is None:
            conn.execute(health_notices.insert().values(destination_id=destination.id, **values))
        else:
            conn.execute(
                health_notices.update()
                .where(health_notices.c.destination_id == destination.id)
                .values(values)
            )

    @staticmethod
    def _event(conn: Connection, destination: Destination, event: str, at: dt.datetime, summary: str) -> None:
        conn.execute(
            health_events.insert().values(
                destination_id=destination.id,
                tenant=destination.tenant,
                event=event,
                at=at,
                summary=summary.replace("\x00", "\ufffd")[:2000],
                notify_status="pending",
                notify_attempts=0,
                notify_error=None,
                sent_to="",
                next_try_at=None,
            )
        )
        log.info("destination health event", destination=destination.id, health_event=event)

    # -- sending --------------------------------------------------------------------------------

    async def send_pending(self, now: dt.datetime) -> None:
        """Sends the events due (pending, next try reached) to every target that has not taken them.
        A target that fails is not tried again in this round (its events stay due, untried and
        uncounted): a receiver that never answers costs a round one :data:`absync.health.notify.TIMEOUT` per
        target, not one per event, so the next tick (auto-disable included) is never held up."""
        settings = await run_in_thread(alerts.load, self.engine, self.box, name="health-alerts")
        notifier = Notifier(settings, self.egress)
        targets = notifier.targets()
        down: set[str] = set()
        pending = await run_in_thread(self._due_events, now, name="health-due")
        for item in pending:
            destination = self.destinations.get(item["destination_id"])
            event = HealthEvent(
                id=item["id"],
                destination_id=item["destination_id"],
                tenant=item["tenant"],
                name=destination.name if destination else item["destination_id"],
                kind=destination.kind if destination else "",
                event=item["event"],
                at=item["at"],
                summary=item["summary"],
            )
            done = {t for t in item["sent_to"].split(",") if t}
            errors, tried, skipped = [], False, False
            for target in targets:
                if target in done:
                    continue
                if target in down:
                    skipped = True
                    continue
                tried = True
                try:
                    await notifier.send(target, event)
                    done.add(target)
                except NotifyError as exc:
                    errors.append(str(exc))
                    down.add(target)
            if targets and not tried:
                continue  # its targets failed earlier this round: left as it is, due next round
            tries = item["notify_attempts"] + 1
            if not targets:
                status = "none"
            elif not errors and not skipped:
                status = "sent"
            elif not errors:
                status = "pending"  # taken by one target, the other is down this round
            else:
                status = "failed" if tries >= MAX_TRIES else "pending"
                log.warning(
                    "health alert not delivered", destination=event.destination_id, errors=errors, tries=tries
                )
            values = {
                "notify_status": status,
                "notify_attempts": tries,
                "notify_error": "; ".join(errors)[:2000] or None,
                "sent_to": ",".join(sorted(done)),
                "next_try_at": now + _backoff(tries) if status == "pending" and errors else None,
            }
            await run_in_thread(self._update_event, item["id"], values, name="health-event")

    def _due_events(self, now: dt.datetime) -> list[dict[str, Any]]:
        """The events to send now: pending and due, oldest first, at most 100 a tick."""
        e = health_events.c
        due = (e.notify_status == "pending") & ((e.next_try_at.is_(None)) | (e.next_try_at <= now))
        with self.engine.connect() as conn:
            query = sa.select(health_events).where(due).order_by(e.id).limit(100)
            return [dict(r) for r in conn.execute(query).mappings()]

    def _update_event(self, event_id: int, values: dict[str, Any]) -> None:
        with writer(self.engine.connect()) as conn, conn.begin():
            conn.execute(health_events.update().where(health_events.c.id == event_id).values(values))


def _has_news(destination: Destination, row: dict[str, Any] | None, notice: dict[str, Any] | None) -> bool:
    """Whether :meth:`HealthMonitor._record` has something to record (read without a lock; it checks
    again under one)."""
    told = notice or {"state": "healthy", "disabled_revision": 0}
    failing = row is not None and row["failing_since"] is not None
    disabled_by_us = not destination.enabled and destination.updated_by == AUTO_DISABLE_ACTOR
    return failing != (told["state"] == "failing") or (
        disabled_by_us and destination.revision > told["disabled_revision"]
    )


def build(settings: Settings) -> HealthMonitor:
    return HealthMonitor(settings)
