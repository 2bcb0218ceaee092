"""The one way to change a destination: used by the web API (and so the console, which calls the
API) and by ``absync destinations`` on the command line.

A write goes through :class:`DestinationService`, which guarantees, for every caller:

- **one write at a time per process**: the read of the current value, the merge and the publish
  happen under one lock, so two writes in this process never both build on the same revision;
- **revision**: a new destination gets revision 1; a changed one the current revision + 1, counted
  from the value this process reads from the destinations topic (the source of truth);
- **secret merge**: secrets are write-only; a write that leaves a secret out (or empty) keeps its
  stored, encrypted value, unless it changes where secrets are sent, which it then refuses
  (:func:`streams.destinations.merge_secrets`);
- **no-op writes are not written**: an update or enable/disable that changes nothing publishes
  nothing and records nothing;
- **read-your-write**: after Kafka acknowledges a write, the service waits (at most
  :data:`WRITE_VISIBLE_TIMEOUT` s) until its own table has read it back, so the caller's next read
  sees it;
- **audit**: every published write (create, update, enable, disable, delete) appends one row to
  ``destination_audit`` with its actor, action and what changed (:func:`audit_changes`: secret
  values never appear, only the names of the secrets set).

The caller builds the candidate :class:`~schemas.destination.Destination` from its input (API body,
YAML document: :func:`streams.destinations.destination_from_dict`, secrets encrypted) and says who
the actor is; validation errors are :class:`~streams.destinations.DestinationError`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.engine import Engine

import connectors.registry  # noqa: F401 - installs the kind catalog merge_secrets reads
from projections import queries
from schemas.destination import Destination
from streams.destinations import (
    DestinationError,
    DestinationTable,
    delete_destination,
    merge_secrets,
    publish_destination,
)
from streams.logging import MASK
from streams.settings import Settings

log = structlog.get_logger(__name__)

WRITE_VISIBLE_TIMEOUT = 10.0
"""Seconds a write waits to read itself back from the destinations topic (then logs a warning)."""
AUDITED_FIELDS = ("tenant", "name", "kind", "enabled", "filters", "changes", "rate_limit", "settings")


class DestinationNotFound(LookupError):
    """No such destination (or not one the caller may see)."""


class DestinationExists(ValueError):
    """A create names an id that is taken."""


def public_view(destination: Destination) -> dict[str, Any]:
    """A destination as it may be shown: everything but secret values (each secret name maps to
    ``MASK``). The API's ``DestinationOut``; also what :func:`audit_changes` compares."""
    return {
        "id": destination.id,
        "tenant": destination.tenant,
        "name": destination.name,
        "kind": destination.kind,
        "enabled": destination.enabled,
        "filters": destination.filters.to_avro(),
        "changes": destination.changes,
        "rate_limit": destination.rate_limit,
        "settings": destination.settings,
        "secrets": dict.fromkeys(sorted(destination.secrets), MASK),
        "revision": destination.revision,
        "updated_at": destination.updated_at,
        "updated_by": destination.updated_by,
        "disabled_at": destination.disabled_at,
    }


def audit_changes(before: Destination | None, after: Destination | None) -> dict[str, Any]:
    """What a write changed: ``{field: {"from": old, "to": new}}``, JSON-safe. A secret shows only
    as set (``{"to": MASK}``) or, on delete, as removed (``{"from": MASK}``); never its value."""
    old = public_view(before) if before else {}
    new = public_view(after) if after else {}
    changes: dict[str, Any] = {}
    for name in AUDITED_FIELDS:
        if old.get(name) != new.get(name):
            changes[name] = {"from": old.get(name), "to": new.get(name)}
    if after is None:
        if before is not None and before.secrets:
            changes["secrets"] = {name: {"from": MASK} for name in sorted(before.secrets)}
    else:
        touched = [n for n, t in after.secrets.items() if before is None or before.secrets.get(n) != t]
        if touched:
            changes["secrets"] = {name: {"to": MASK} for name in sorted(touched)}
    return json.loads(json.dumps(changes, default=str))  # type: ignore[no-any-return]


def _everyone(_: Destination) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Written:
    """The outcome of a write: the destination as it stands now, the value before, and what changed
    (empty: nothing was published nor audited)."""

    destination: Destination
    previous: Destination | None
    changes: dict[str, Any]

    @property
    def published(self) -> bool:
        return bool(self.changes)


class DestinationService:
    """Destination writes for one process: ``table`` must be started (and is read for the current
    values), ``engine`` holds ``destination_audit``."""

    def __init__(
        self,
        settings: Settings,
        table: DestinationTable,
        engine: Engine,
        *,
        visible_timeout: float = WRITE_VISIBLE_TIMEOUT,
    ) -> None:
        self._settings = settings
        self._table = table
        self._engine = engine
        self._visible_timeout = visible_timeout
        self._lock = threading.Lock()

    # -- writes ------------------------------------------------------------------------------------

    def create(self, candidate: Destination, *, actor: str) -> Written:
        """Publishes a new destination (revision 1). :class:`DestinationExists` if the id is taken."""
        with self._lock:
            if self._table.get(candidate.id) is not None:
                raise DestinationExists(f"destination id {candidate.id!r} is taken")
            return self._write(None, self._merged(candidate, None, actor), actor, "create")

    def update(
        self,
        destination_id: str,
        edit: Callable[[Destination], Destination],
        *,
        actor: str,
        action: str = "update",
        visible: Callable[[Destination], bool] = _everyone,
    ) -> Written:
        """Replaces a destination with ``edit(current)`` (its secrets: the ones entered; the others
        are kept, see the module). :class:`DestinationNotFound` if it does not exist or is not
        ``visible``; :class:`DestinationError` if the merge refuses. ``edit`` runs under the lock
        and may raise to refuse."""
        with self._lock:
            before = self._current(destination_id, visible)
            after = self._merged(edit(before), before, actor)
            return self._write(before, after, actor, action)

    def set_enabled(
        self,
        destination_id: str,
        enabled: bool,
        *,
        actor: str,
        visible: Callable[[Destination], bool] = _everyone,
    ) -> Written:
        """Enables or disables a destination (nothing written if it already is)."""
        return self.update(
            destination_id,
            lambda before: dataclasses.replace(before, enabled=enabled, secrets={}),
            actor=actor,
            action="enable" if enabled else "disable",
            visible=visible,
        )

    def apply(self, candidates: Sequence[Destination], *, actor: str) -> list[Written]:
        """Creates or replaces each destination (as ``absync destinations apply`` does with a YAML
        file). Every candidate is merged before any is published: a refused one
        (:class:`DestinationError` naming its id) leaves every destination as it was."""
        with self._lock:
            merged: list[tuple[Destination | None, Destination]] = []
            for candidate in candidates:
                before = self._table.get(candidate.id)
                try:
                    merged.append((before, self._merged(candidate, before, actor)))
                except DestinationError as exc:
                    raise DestinationError(f"destination {candidate.id}: {exc}") from exc
            return [
                self._write(before, after, actor, "update" if before else "create")
                for before, after in merged
            ]

    def delete(
        self, destination_id: str, *, actor: str, visible: Callable[[Destination], bool] = _everyone
    ) -> Destination:
        """Deletes a destination (a tombstone); returns its last value."""
        with self._lock:
            before = self._current(destination_id, visible)
            delete_destination(self._settings, destination_id)
            self._await(lambda: self._table.get(destination_id) is None, destination_id)
            self._audit(before, None, actor, "delete")
            return before

    # -- inside --------------------------------------------------------------------------------------

    def _current(self, destination_id: str, visible: Callable[[Destination], bool]) -> Destination:
        current = self._table.get(destination_id)
        if current is None or not visible(current):
            raise DestinationNotFound(f"no destination {destination_id!r}")
        return current

    @staticmethod
    def _merged(candidate: Destination, before: Destination | None, actor: str) -> Destination:
        """``candidate`` with the kept secrets, the next revision and this write's actor and time."""
        return dataclasses.replace(
            candidate,
            secrets=merge_secrets(before, candidate.kind, candidate.settings, candidate.secrets),
            revision=before.revision + 1 if before else 1,
            updated_at=dt.datetime.now(dt.UTC),
            updated_by=actor,
        ).stamped(before)  # disabled_at: when it was disabled, for the catch-up of an enable

    def _write(self, before: Destination | None, after: Destination, actor: str, action: str) -> Written:
        changes = audit_changes(before, after)
        if before is not None and not changes:
            return Written(before, before, {})
        publish_destination(self._settings, after)
        self._await(lambda: self._seen(after), after.id)
        self._audit(before, after, actor, action, changes)
        return Written(after, before, changes)

    def _seen(self, after: Destination) -> bool:
        seen = self._table.get(after.id)
        return seen is not None and seen.revision >= after.revision

    def _await(self, done: Callable[[], bool], destination_id: str) -> None:
        deadline = time.monotonic() + self._visible_timeout
        while not done():
            if time.monotonic() >= deadline:
                log.warning("destination written but not read back yet", destination=destination_id)
                return
            time.sleep(0.02)

    def _audit(
        self,
        before: Destination | None,
        after: Destination | None,
        actor: str,
        action: str,
        changes: dict[str, Any] | None = None,
    ) -> None:
        subject = after or before
        assert subject is not None
        queries.record_audit(
            self._engine,
            destination_id=subject.id,
            tenant=subject.tenant,
            actor=actor,
            action=action,
            changes=audit_changes(before, after) if changes is None else changes,
        )
        log.info("destination changed", destination=subject.id, action=action, actor=actor)
