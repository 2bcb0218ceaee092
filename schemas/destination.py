"""A destination: where absence changes go, and which ones (filters).

The kinds themselves (their names, settings, secrets) are declared by the connectors
(:mod:`connectors.declaration`). This layer cannot import them: it sees them through the
:class:`KindCatalog` that :mod:`connectors.registry` installs when it is imported. A process that
validates destinations without having imported it fails loudly (:func:`kind_catalog`), never
accepts an unchecked kind.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from schemas.models import AbsenceEvent


class KindCatalog(Protocol):
    """The destination kinds, as the lower layers need them (implemented by connectors.registry)."""

    def kinds(self) -> tuple[str, ...]:
        """Every kind's name."""
        ...

    def check(self, kind: str, settings: Mapping[str, Any]) -> None:
        """Raises ValueError (one line per problem) when ``kind`` is unknown or ``settings`` do not
        fit its settings model."""
        ...

    def check_secrets(self, kind: str, secrets: Mapping[str, str]) -> None:
        """Raises ValueError (one part per problem, never a secret's value) when a newly written
        secret of ``kind`` (non-empty) is refused by the check its kind declares."""
        ...

    def url_settings(self) -> frozenset[str]:
        """Names of the settings, of any kind, that must be http(s) URLs."""
        ...

    def endpoint_settings(self, kind: str) -> tuple[str, ...]:
        """The settings of ``kind`` that decide where its secrets are sent."""
        ...


_catalog: KindCatalog | None = None


def use_kind_catalog(catalog: KindCatalog) -> None:
    """Installs the process's kind catalog (done by importing :mod:`connectors.registry`)."""
    global _catalog
    _catalog = catalog


def kind_catalog() -> KindCatalog:
    """The installed catalog; RuntimeError when none is (import connectors.registry first)."""
    if _catalog is None:
        raise RuntimeError(
            "no destination kind catalog: import connectors.registry before validating destinations"
        )
    return _catalog


MIN_RATE = 0.1
"""Requests per second: the lowest limit a destination may set (one request every 10 s)."""
MAX_RATE = 1000.0
"""Requests per second: the highest limit a destination may set (above it, set none)."""


def check_rate(rate: float | None) -> float | None:
    """``rate`` if it is a valid limit (None: unlimited); a :class:`ValueError` that says why not
    (its message reads after the field's name: ``rate_limit: must be ...``)."""
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate != rate:
        raise ValueError("must be a number of requests per second, or null for no limit")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(
            f"must be between {MIN_RATE:g} and {MAX_RATE:g} requests per second "
            f"(or null for no limit), got {rate:g}"
        )
    return float(rate)


class ChangeSelection(enum.StrEnum):
    ALL = "ALL"
    APPROVED_AND_DELETIONS = "APPROVED_AND_DELETIONS"


@dataclass(frozen=True, slots=True)
class Filters:
    """Empty list = everything."""

    legal_entities: tuple[str, ...] = ()
    departments: tuple[str, ...] = ()
    leave_accounts: tuple[str, ...] = ()
    leave_categories: tuple[str, ...] = ()
    employees: tuple[str, ...] = ()

    def matches(self, event: AbsenceEvent) -> bool:
        e, la = event.employee, event.absence.leave_account
        checks = (
            (self.legal_entities, e.legal_entity_id),
            (self.departments, e.department_id),
            (self.leave_accounts, la.id),
            (self.leave_categories, la.category_id),
            (self.employees, e.id),
        )
        return all(not allowed or value in allowed for allowed, value in checks)

    def to_avro(self) -> dict[str, list[str]]:
        return {
            "legal_entities": list(self.legal_entities),
            "departments": list(self.departments),
            "leave_accounts": list(self.leave_accounts),
            "leave_categories": list(self.leave_categories),
            "employees": list(self.employees),
        }

    @classmethod
    def from_avro(cls, data: dict[str, Any]) -> Filters:
        return cls(**{k: tuple(str(x) for x in data.get(k) or ()) for k in cls.__slots__})


@dataclass(frozen=True, slots=True)
class Destination:
    id: str
    tenant: str
    name: str
    kind: str
    enabled: bool = True
    filters: Filters = field(default_factory=Filters)
    changes: ChangeSelection = ChangeSelection.ALL
    settings: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, bytes] = field(default_factory=dict)
    """Secret name -> encrypted token (see streams.secrets). Never clear text."""
    revision: int = 0
    updated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    updated_by: str = "cli"
    rate_limit: float | None = None
    """At most this many requests per second to the destination (0.1 to 1000); None: no limit.
    Enforced by the delivery worker for every attempt (processors/delivery/rate_limit.py)."""
    disabled_at: dt.datetime | None = None
    """When it was last disabled; None while enabled (see :meth:`stamped`)."""

    def stamped(self, previous: Destination | None) -> Destination:
        """This new revision with ``disabled_at`` carried over from ``previous``: the time of the write
        that disabled it (kept while it stays disabled), None once enabled. Enabling reads it to
        resync the absences changed meanwhile (:mod:`absync.web.resync_jobs`)."""
        if self.enabled:
            disabled_at = None
        elif previous is not None and not previous.enabled and previous.disabled_at is not None:
            disabled_at = previous.disabled_at
        else:  # milliseconds: what the Avro record keeps, so the API answers what Kafka holds
            disabled_at = self.updated_at.replace(microsecond=self.updated_at.microsecond // 1000 * 1000)
        return replace(self, disabled_at=disabled_at)

    def matches(self, event: AbsenceEvent) -> bool:
        """Whether this destination should hold this absence (tenant and filters; not the change kind)."""
        return self.enabled and event.tenant == self.tenant and self.filters.matches(event)

    def to_avro(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "name": self.name,
            "kind": self.kind,
            "enabled": self.enabled,
            "filters": self.filters.to_avro(),
            "changes": self.changes.value,
            "settings_json": json.dumps(self.settings, sort_keys=True),
            "secrets": dict(self.secrets),
            "revision": self.revision,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
            "disabled_at": self.disabled_at,
            "rate_limit": self.rate_limit,
        }

    @classmethod
    def from_avro(cls, data: dict[str, Any]) -> Destination:
        return cls(
            id=data["id"],
            tenant=data["tenant"],
            name=data["name"],
            kind=data["kind"],
            enabled=bool(data.get("enabled", True)),
            filters=Filters.from_avro(data.get("filters") or {}),
            changes=ChangeSelection(data.get("changes", "ALL")),
            settings=json.loads(data.get("settings_json") or "{}"),
            secrets={k: bytes(v) for k, v in (data.get("secrets") or {}).items()},
            revision=int(data.get("revision", 0)),
            updated_at=data["updated_at"],
            updated_by=data.get("updated_by", "cli"),
            disabled_at=data.get("disabled_at"),
            rate_limit=data.get("rate_limit"),
        )
