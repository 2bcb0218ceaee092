"""What a destination kind declares, once, in its connector module.

A connector class carries a :class:`KindDeclaration` as its ``declaration`` class attribute:

- ``kind``: the name written in a destination (``kind: http``); it is also the connector module's
  name (``connectors/<kind>.py``): that is how :mod:`connectors.registry` finds it, no list to edit;
- ``label``: what the console calls it;
- ``settings``: a pydantic model of its settings (:class:`KindSettings`): every setting the
  connector reads, with its description; a setting typed :data:`HttpUrlSetting` must be an
  ``http(s)://`` URL with a host (checked when a destination is written);
- ``secrets``: its secrets, write-only (the console shows an empty field; the API never returns them);
  a secret may be uploaded as a file (:func:`secret_file`: the console reads it in the browser, bounded)
  and may carry a ``check`` run on every write of a new value (API, console and CLI alike);
- ``form``: the settings the console form shows (label, type, help, required); anything else goes in
  the form's "Other settings" JSON box, so a setting is never out of reach;
- ``endpoint_settings``: the settings that decide where the secrets are sent (or whom TLS trusts to
  receive them): changing one requires entering the secrets again (:func:`streams.destinations.merge_secrets`);
- ``digest``: True for a kind fed by a daily digest (Slack) instead of one delivery per change.

Guarantees: a declaration is plain data (frozen, no I/O); :func:`check_declaration` is what the
registry checks when a connector registers (every secret and form field names a setting or secret the
connector knows, and ``kind`` matches its module), so a kind cannot register half-declared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

FIELD_TYPES = ("text", "url", "select", "checkbox", "textarea", "number")
"""Input types of a setting's form field."""
SECRET_TYPES = ("secret", "secret_text", "secret_file")
"""Input types of a secret's form field: one line (password input), several (PEM), or a file the
operator uploads (a JSON key file): read in the browser, never shown back."""
MAX_SECRET_FILE_BYTES = 16 * 1024
"""Upper bound of an uploaded secret file: a secret's bound (streams.destination_input.SecretValue)."""


def check_http_url(value: Any) -> Any:
    """``value`` when it is an ``http://`` or ``https://`` URL with a host; ValueError otherwise."""
    from urllib.parse import urlsplit

    if not isinstance(value, str):
        raise ValueError("must be an http(s) URL (a string)")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        host = None
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not host:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


HttpUrlSetting = Annotated[Any, AfterValidator(check_http_url)]
"""A setting that says where absync connects (and sends secrets): an http(s) URL with a host."""


class KindSettings(BaseModel):
    """Base of every kind's settings model. Settings the model does not name are kept (``extra``):
    the connector decides what it reads; the model says what each declared setting is."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @classmethod
    def url_settings(cls) -> frozenset[str]:
        """The settings typed :data:`HttpUrlSetting`."""
        return frozenset(
            name
            for name, info in cls.model_fields.items()
            if any(isinstance(m, AfterValidator) and m.func is check_http_url for m in info.metadata)
        )


def setting(description: str, default: Any = None) -> Any:
    """A declared setting (optional at write time: the connector says what is missing when it is built)."""
    return Field(default=default, description=description)


@dataclass(frozen=True, slots=True)
class FormField:
    """One field of the console's destination form."""

    name: str
    """The setting's (or secret's) name, sent as it is by the form's JavaScript."""
    label: str
    type: str = "text"
    """:data:`FIELD_TYPES` for a setting, :data:`SECRET_TYPES` for a secret."""
    required: bool = False
    help: str = ""
    options: tuple[str, ...] = ()
    """The choices of a ``select``."""
    accept: str = ""
    """For a ``secret_file``: the file types the browser offers (the ``accept`` attribute)."""
    max_bytes: int = 0
    """For a ``secret_file``: the largest file accepted (checked in the browser before it is read)."""
    check: Callable[[str], None] | None = None
    """For a secret: raises ValueError, with a message that never contains the value, when a newly
    written value cannot be what the connector needs (e.g. a file that is not a service-account key)."""


def secret(name: str, label: str, help: str = "", *, multiline: bool = False) -> FormField:
    """A write-only secret's field."""
    return FormField(name, label, "secret_text" if multiline else "secret", help=help)


def secret_file(
    name: str,
    label: str,
    help: str = "",
    *,
    accept: str,
    check: Callable[[str], None] | None = None,
    max_bytes: int = MAX_SECRET_FILE_BYTES,
) -> FormField:
    """A write-only secret the operator uploads as a file (e.g. a JSON key file), at most
    ``max_bytes``; ``check`` validates a new value when a destination is written."""
    return FormField(name, label, "secret_file", help=help, accept=accept, max_bytes=max_bytes, check=check)


@dataclass(frozen=True, slots=True)
class KindDeclaration:
    """Everything absync knows about a destination kind outside its connector's code."""

    kind: str
    label: str
    settings: type[KindSettings]
    secrets: tuple[FormField, ...]
    form: tuple[FormField, ...]
    endpoint_settings: tuple[str, ...] = ()
    digest: bool = False

    @property
    def secret_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.secrets)

    def check_secrets(self, secrets: Mapping[str, str]) -> None:
        """Raises ValueError naming each newly written secret (a non-empty value) its ``check``
        refuses; the message never contains a secret's value. Empty values (kept) are not checked."""
        problems = []
        for field in self.secrets:
            value = secrets.get(field.name)
            if field.check is None or not value:
                continue
            try:
                field.check(value)
            except ValueError as exc:
                problems.append(f"secrets.{field.name}: {exc}")
        if problems:
            raise ValueError("; ".join(problems))


def check_declaration(declaration: KindDeclaration, module: str) -> None:
    """Raises TypeError when ``declaration`` is incomplete or inconsistent (see the module docstring)."""
    where = f"{module}: kind {declaration.kind!r}"
    if module.rsplit(".", 1)[-1] != declaration.kind:
        raise TypeError(f"{where} must be declared in connectors/{declaration.kind}.py")
    if not declaration.label:
        raise TypeError(f"{where} needs a label")
    known = set(declaration.settings.model_fields)
    for field in declaration.form:
        if field.name not in known:
            raise TypeError(f"{where}: form field {field.name!r} is not in its settings model")
        if field.type not in FIELD_TYPES:
            raise TypeError(f"{where}: form field {field.name!r} has type {field.type!r}")
        if (field.type == "select") != bool(field.options):
            raise TypeError(f"{where}: form field {field.name!r}: options go with type 'select'")
    for field in declaration.secrets:
        if field.type not in SECRET_TYPES:
            raise TypeError(f"{where}: secret {field.name!r} has type {field.type!r}")
        if field.name in known:
            raise TypeError(f"{where}: {field.name!r} is declared as a setting and as a secret")
        if (field.type == "secret_file") != (field.max_bytes > 0 and bool(field.accept)):
            raise TypeError(
                f"{where}: secret {field.name!r}: accept and max_bytes go with type 'secret_file'"
            )
        if field.max_bytes > MAX_SECRET_FILE_BYTES:
            raise TypeError(f"{where}: secret {field.name!r}: max_bytes above {MAX_SECRET_FILE_BYTES}")
    unknown = set(declaration.endpoint_settings) - known
    if unknown:
        raise TypeError(f"{where}: endpoint settings {sorted(unknown)} are not in its settings model")


# -- what several kinds share ---------------------------------------------------------------


class CalendarSettingsModel(KindSettings):
    """The calendar settings of graph, ews and google (read by :class:`connectors.calendar.CalendarSettings`)."""

    title_template: Any = setting("Event title; placeholders {employee_name}, {employee_email}.")
    show_leave_type: Any = setting("Show the leave type in the title.")
    mark_private: Any = setting("Mark events private.")
    include_pending: Any = setting("Include absences not yet approved.")
    morning_hours: Any = setting("For half days, e.g. 09:00-12:30.")
    afternoon_hours: Any = setting("For half days, e.g. 13:30-18:00.")


CALENDAR_FORM = (
    FormField("title_template", "Event title", help="Placeholders: {employee_name}, {employee_email}."),
    FormField("show_leave_type", "Show the leave type in the title", "checkbox"),
    FormField("mark_private", "Mark events private", "checkbox"),
    FormField("include_pending", "Include absences not yet approved", "checkbox"),
    FormField("morning_hours", "Morning hours", help="For half days, e.g. 09:00-12:30."),
    FormField("afternoon_hours", "Afternoon hours", help="For half days, e.g. 13:30-18:00."),
)
