"""What a destination write may contain: one pydantic model for the API and for YAML apply.

``DestinationUpdate`` (a PUT body) and ``DestinationCreate`` (a POST body, one YAML document) are
validated with the same rules wherever a destination comes from:

- ``id`` matches :data:`ID_PATTERN`; an id with a ``:`` is namespaced: the part before its last
  ``:`` must be the destination's tenant (see :func:`check_id_namespace`);
- types are strict where a YAML or JSON coercion would surprise: ``enabled`` is ``true`` or
  ``false`` (the string ``"false"`` is an error, never "enabled"), names, filter values and
  secrets are strings;
- ``kind`` is a kind some connector declares, and ``settings`` fit that kind's settings model, as
  told by the :class:`schemas.destination.KindCatalog` (:mod:`connectors.registry`; this layer cannot
  import connectors, so a process without the catalog refuses to validate rather than guess);
- every setting that some kind declares as an address (:meth:`KindCatalog.url_settings`) is an
  ``http://`` or ``https://`` URL with a host, whatever the destination's kind;
- a secret written anew (non-empty) passes the check its kind declares, if any
  (:meth:`KindCatalog.check_secrets`: e.g. Google's key file must be a service-account key), and
  no error message contains a secret's value;
- ``name`` is one line of text: no control character (NUL, line break, escape);
- ``settings`` nest at most :data:`MAX_SETTINGS_DEPTH` levels; no key holds a control character and
  no string value one other than tab and line breaks (a NUL is refused by PostgreSQL's JSON, an
  escape would reach a log or a header);
- ``rate_limit`` is a number of requests per second within the bounds of
  :func:`schemas.destination.check_rate`, or null (no limit);
- everything is bounded: lengths of names and filter values, number of filter values and secrets,
  size of settings, and the size of the whole write (:data:`MAX_WRITE_BYTES`), so that a
  destination always fits in one Kafka record.

:func:`load_yaml_documents` reads a YAML file with bounds of its own: its size
(:data:`MAX_YAML_BYTES`), no anchors or aliases (no "billion laughs" expansion), no duplicate keys
and a maximum nesting depth. Every failure is a :class:`ValueError` whose message names the
document and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError

from schemas.destination import MAX_RATE, MIN_RATE, ChangeSelection, check_rate, kind_catalog

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$"
MAX_FILTER_VALUES = 5000
MAX_SECRETS = 32
MAX_SETTINGS_BYTES = 64 * 1024
MAX_SETTINGS_DEPTH = 20
MAX_WRITE_BYTES = 256 * 1024
"""A whole destination write, as JSON: well under Kafka's 1 MB record limit once encrypted."""
MAX_YAML_BYTES = 1024 * 1024
MAX_YAML_DEPTH = 20

FilterValue = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200)]
FilterValues = Annotated[list[FilterValue], Field(max_length=MAX_FILTER_VALUES)]
SecretValue = Annotated[str, StringConstraints(strict=True, max_length=16 * 1024)]


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _control(char: str) -> bool:
    return ord(char) < 32 or ord(char) == 127


class FiltersModel(BaseModel):
    """Empty list = everything."""

    model_config = ConfigDict(extra="forbid")

    legal_entities: FilterValues = []
    departments: FilterValues = []
    leave_accounts: FilterValues = []
    leave_categories: FilterValues = []
    employees: FilterValues = []


class DestinationUpdate(BaseModel):
    """A destination's whole configuration. ``secrets`` are write-only: a secret left out (or empty)
    keeps its current value; values are encrypted before they reach Kafka and never shown."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "name": "Team calendar webhook",
                "kind": "http",
                "enabled": True,
                "filters": {"departments": ["d-1"]},
                "changes": "ALL",
                "rate_limit": 5,
                "settings": {"url": "http://127.0.0.1:9/absences"},
                "secrets": {"signing_secrets": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
            }
        },
    )

    name: str = Field(min_length=1, max_length=400, strict=True)
    kind: str = Field(
        strict=True,
        max_length=40,
        json_schema_extra=lambda schema: schema.update(enum=list(kind_catalog().kinds())),
    )
    enabled: bool = Field(default=True, strict=True)
    filters: FiltersModel = FiltersModel()
    changes: Annotated[ChangeSelection, BeforeValidator(_upper)] = ChangeSelection.ALL
    rate_limit: float | None = Field(
        default=None,
        description=f"At most this many requests per second to the destination ({MIN_RATE:g} to "
        f"{MAX_RATE:g}), for live deliveries, retries and resyncs alike; null: no limit. Shared by "
        "the delivery worker processes by their share of the partitions.",
    )
    settings: dict[str, Any] = {}
    secrets: dict[str, SecretValue] = Field(default={}, description="Write-only.", max_length=MAX_SECRETS)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        known = kind_catalog().kinds()
        if kind not in known:
            raise ValueError(f"Input should be {', '.join(repr(k) for k in known)}")
        return kind

    @field_validator("name")
    @classmethod
    def _one_line(cls, name: str) -> str:
        """Shown in the console, the audit and operator alerts: no NUL, line break or escape (a
        line break in an alert's Slack text would forge a line of its own)."""
        if any(_control(c) for c in name):
            raise ValueError("must not contain control characters (NUL, line breaks, escapes)")
        return name

    @field_validator("settings", mode="before")
    @classmethod
    def _plain_settings(cls, settings: object) -> object:
        """Bounded nesting, no control character (see the module docstring); walked without
        recursion, before anything else reads the settings."""
        pending: list[tuple[str, object, int]] = [("settings", settings, 0)]
        while pending:
            path, value, depth = pending.pop()
            if depth > MAX_SETTINGS_DEPTH:
                raise ValueError(f"settings nest deeper than {MAX_SETTINGS_DEPTH} levels")
            if isinstance(value, str) and any(_control(c) and c not in "\t\n\r" for c in value):
                raise ValueError(f"{path[:200]} must not contain control characters (NUL, escapes)")
            if isinstance(value, dict):
                for key, item in value.items():
                    if isinstance(key, str) and any(_control(c) for c in key):
                        raise ValueError(f"{path[:200]}: a key must not contain control characters")
                    pending.append((f"{path}.{key}", item, depth + 1))
            elif isinstance(value, list):
                pending.extend((f"{path}[{i}]", item, depth + 1) for i, item in enumerate(value))
        return settings

    @field_validator("rate_limit", mode="before")
    @classmethod
    def _rate(cls, value: object) -> object:
        """A number (not ``"5"``, not ``true``) within the bounds, or null."""
        return check_rate(value)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _bounded_and_http(self) -> DestinationUpdate:
        catalog = kind_catalog()
        for name in sorted(catalog.url_settings() & set(self.settings)):
            check_http_url(f"settings.{name}", self.settings[name])
        catalog.check(self.kind, self.settings)
        catalog.check_secrets(self.kind, self.secrets)
        if len(json.dumps(self.settings, default=str)) > MAX_SETTINGS_BYTES:
            raise ValueError(f"settings are larger than {MAX_SETTINGS_BYTES} bytes")
        if len(self.model_dump_json()) > MAX_WRITE_BYTES:
            raise ValueError(f"the destination is larger than {MAX_WRITE_BYTES} bytes")
        return self


class DestinationCreate(DestinationUpdate):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "id": "acme:team-webhook",
                "tenant": "acme",
                **DestinationUpdate.model_config["json_schema_extra"]["example"],  # type: ignore[index, dict-item]
            }
        },
    )

    id: str = Field(
        pattern=ID_PATTERN,
        strict=True,
        description="Unique. `TENANT:NAME` is the tenant's own namespace (required for a token "
        "limited to one tenant); an id without `:` is global.",
    )
    tenant: str | None = Field(
        default=None, min_length=1, max_length=200, strict=True, description="Defaults to the token's tenant."
    )

    @model_validator(mode="after")
    def _namespace(self) -> DestinationCreate:
        if self.tenant is not None:
            problem = check_id_namespace(self.id, self.tenant)
            if problem:
                raise ValueError(problem)
        return self


def check_http_url(field: str, value: object) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{field} must be an http(s) URL (a string)")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        host = None
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not host:
        raise ValueError(f"{field} must be an http:// or https:// URL with a host")


def check_id_namespace(destination_id: str, tenant: str) -> str | None:
    """Why ``destination_id`` may not belong to ``tenant``, or None.

    An id ``T:NAME`` belongs to tenant ``T`` (the part before the last ``:``): no other tenant can
    take it, so creating an id of one's own namespace never tells anything about other tenants.
    """
    if ":" in destination_id and destination_id.rsplit(":", 1)[0] != tenant:
        return f"an id with ':' is namespaced: it must start with the tenant, {tenant + ':'!r}"
    return None


def describe(error: PydanticValidationError) -> str:
    """A validation error in one line per problem: ``field.path: message``."""
    lines = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in item["loc"]) or "destination"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(message if item["type"] == "value_error" and not item["loc"] else f"{where}: {message}")
    return "; ".join(lines)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors/aliases and duplicate keys, with a nesting limit."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in destination files", event.start_mark
            )
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(
                None, None, "anchors (&name) are not allowed in destination files", event.start_mark
            )
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """The destination documents of a YAML file (one per document, or a list in one), bounded."""
    with path.open("rb") as handle:
        raw = handle.read(MAX_YAML_BYTES + 1)
    if len(raw) > MAX_YAML_BYTES:
        raise ValueError(f"{path}: larger than {MAX_YAML_BYTES} bytes: split it into several files")
    try:
        text = raw.decode("utf-8")
        loader = _BoundedLoader(text)
        try:
            documents: list[Any] = []
            while loader.check_data():  # type: ignore[no-untyped-call]
                doc = loader.get_data()
                if isinstance(doc, list):
                    documents.extend(doc)
                elif doc is not None:
                    documents.append(doc)
        finally:
            loader.dispose()  # type: ignore[no-untyped-call]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ValueError(f"{path}: {where}{exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    for i, doc in enumerate(documents):
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: document {i + 1} is not a mapping")
    return documents


def _without_empty_sections(doc: dict[str, Any]) -> dict[str, Any]:
    """In YAML an empty section (``secrets:`` followed only by comments) is null: it means "none"."""
    out = {k: v for k, v in doc.items() if not (k in ("filters", "settings", "secrets") and v is None)}
    if isinstance(out.get("filters"), dict):
        out["filters"] = {k: v for k, v in out["filters"].items() if v is not None}
    return out


def validate_documents(path: Path, documents: list[dict[str, Any]]) -> list[DestinationCreate]:
    """Each document as a :class:`DestinationCreate` with a tenant; no id twice in one file."""
    out: list[DestinationCreate] = []
    seen: dict[str, int] = {}
    for i, doc in enumerate(documents, start=1):
        label = f"{path}: document {i}" + (f" ({doc['id']})" if isinstance(doc.get("id"), str) else "")
        try:
            model = DestinationCreate.model_validate(_without_empty_sections(doc))
        except PydanticValidationError as exc:
            raise ValueError(f"{label}: {describe(exc)}") from None
        if model.tenant is None:
            raise ValueError(f"{label}: tenant: Field required")
        if model.id in seen:
            raise ValueError(f"{label}: id {model.id!r} is already used by document {seen[model.id]}")
        seen[model.id] = i
        out.append(model)
    return out
