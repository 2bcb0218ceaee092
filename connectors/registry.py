"""Destination kinds: where everyone else (processors, the API, the console, the CLI) reads them.

A kind is declared once, in its connector module ``connectors/<kind>.py``, by a connector class
decorated with :func:`register` whose ``declaration`` is a :class:`connectors.declaration.KindDeclaration`.
There is no list to keep: a kind's module is found by its name, and :func:`declarations` finds every
kind by looking at the modules of this package. Adding a kind is one connector module (plus its fake,
its test and its doc: docs/contributing.md).

Importing this module also installs it as the process's :class:`schemas.destination.KindCatalog`,
through which the lower layers (:mod:`streams.destination_input`, :mod:`streams.destinations`) validate
a destination's kind and settings without importing connectors.

Guarantees: a kind name that is not ``[a-z][a-z0-9_]*`` or names no module declaring it is refused
with a :class:`ConfigurationError` before anything is imported; a module is imported at most once;
callers get the contract they need, typed (:func:`delivery_connector_class` never returns a digest
connector, :func:`digest_connector_class` never a per-change one).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import threading
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import ValidationError

import connectors
from connectors.base import BaseConnector, Connector, DigestConnector
from connectors.declaration import KindDeclaration, check_declaration
from connectors.exceptions import ConfigurationError
from schemas.destination import Destination, use_kind_catalog

C = TypeVar("C", bound=type[BaseConnector])

KIND_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,39}")
_REGISTRY: dict[str, type[BaseConnector]] = {}
_lock = threading.RLock()
_all_loaded = False


def register(cls: C) -> C:
    """Class decorator of a connector: checks its declaration (:func:`check_declaration`) and makes
    its kind known. Raises TypeError for an incomplete declaration or a kind registered twice."""
    declaration = cls.__dict__.get("declaration")
    if not isinstance(declaration, KindDeclaration):
        raise TypeError(f"{cls.__module__}.{cls.__name__} has no KindDeclaration 'declaration'")
    check_declaration(declaration, cls.__module__)
    if declaration.digest != issubclass(cls, DigestConnector) or not issubclass(
        cls, Connector | DigestConnector
    ):
        raise TypeError(f"{cls.__name__}: a digest kind is a DigestConnector, any other kind a Connector")
    with _lock:
        known = _REGISTRY.get(declaration.kind)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise TypeError(
                f"kind {declaration.kind!r} is registered twice ({known.__name__}, {cls.__name__})"
            )
        _REGISTRY[declaration.kind] = cls
    return cls


def connector_class(kind: str) -> type[BaseConnector]:
    """The connector of ``kind`` (either contract: for set-up, connection tests, close)."""
    with _lock:
        if kind not in _REGISTRY:
            _load(kind)
        return _REGISTRY[kind]


def delivery_connector_class(kind: str) -> type[Connector]:
    """The per-change connector of ``kind``; ConfigurationError for a digest kind (no deliveries)."""
    cls = connector_class(kind)
    if not issubclass(cls, Connector):
        raise ConfigurationError(f"destination kind {kind!r} takes no per-change deliveries (a daily digest)")
    return cls


def digest_connector_class(kind: str) -> type[DigestConnector]:
    """The digest connector of ``kind``; ConfigurationError for a per-change kind."""
    cls = connector_class(kind)
    if not issubclass(cls, DigestConnector):
        raise ConfigurationError(f"destination kind {kind!r} has no daily digest")
    return cls


def declaration(kind: str) -> KindDeclaration:
    """What ``kind`` declares; ConfigurationError for an unknown kind."""
    return connector_class(kind).declaration


def declarations() -> tuple[KindDeclaration, ...]:
    """Every kind's declaration, sorted by label (imports every connector module once)."""
    global _all_loaded
    with _lock:
        if not _all_loaded:
            for module in pkgutil.iter_modules(connectors.__path__):
                if KIND_PATTERN.fullmatch(module.name):
                    importlib.import_module(f"connectors.{module.name}")
            _all_loaded = True
        found = list(_REGISTRY.values())
    return tuple(sorted((cls.declaration for cls in found), key=lambda d: d.label.lower()))


def kinds() -> tuple[str, ...]:
    return tuple(d.kind for d in declarations())


def receives_changes(destination: Destination) -> bool:
    """Whether the fan-out sends ``destination`` one delivery per absence change (not a digest kind).

    Never raises: a destination of an unknown kind receives its changes, and each delivery then fails
    on its own with the ConfigurationError naming the kind (no destination stops the fan-out)."""
    try:
        return not declaration(destination.kind).digest
    except ConfigurationError:
        return True


def _load(kind: str) -> None:
    if not KIND_PATTERN.fullmatch(kind) or importlib.util.find_spec(f"connectors.{kind}") is None:
        raise ConfigurationError(f"unknown destination kind {kind!r} (known: {', '.join(kinds())})")
    importlib.import_module(f"connectors.{kind}")
    if kind not in _REGISTRY:
        raise ConfigurationError(f"unknown destination kind {kind!r} (known: {', '.join(kinds())})")


class _Catalog:
    """This registry as :class:`schemas.destination.KindCatalog` (ValueError for the streams layer)."""

    def kinds(self) -> tuple[str, ...]:
        return kinds()

    def check(self, kind: str, settings: Mapping[str, Any]) -> None:
        try:
            model = declaration(kind).settings
        except ConfigurationError as exc:
            raise ValueError(exc.message) from None
        try:
            model.model_validate(dict(settings))
        except ValidationError as exc:
            problems = [
                f"settings.{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors(include_url=False, include_input=False)
            ]
            raise ValueError("; ".join(problems)) from None

    def check_secrets(self, kind: str, secrets: Mapping[str, str]) -> None:
        try:
            found = declaration(kind)
        except ConfigurationError as exc:
            raise ValueError(exc.message) from None
        found.check_secrets(secrets)

    def url_settings(self) -> frozenset[str]:
        return frozenset().union(*(d.settings.url_settings() for d in declarations()))

    def endpoint_settings(self, kind: str) -> tuple[str, ...]:
        try:
            return declaration(kind).endpoint_settings
        except ConfigurationError:
            return ()


use_kind_catalog(_Catalog())
