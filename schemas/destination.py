"""A destination: where absence changes go, and which ones (filters)."""

from __future__ import annotations

import datetime as dt
import enum
import json
from dataclasses import dataclass, field
from typing import Any

from schemas.models import AbsenceEvent

KINDS = ("http", "graph", "ews", "google", "slack", "adp")
DIGEST_KINDS = ("slack",)
"""Kinds fed by a daily digest (the Slack post) rather than one delivery per absence change."""


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

    def matches(self, event: AbsenceEvent) -> bool:
        """Whether this destination should hold this absence (tenant and filters; not the change kind)."""
        return self.enabled and event.tenant == self.tenant and self.filters.matches(event)

    @property
    def receives_changes(self) -> bool:
        """Whether the fan-out sends this destination one delivery per absence change."""
        return self.kind not in DIGEST_KINDS

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
        )
