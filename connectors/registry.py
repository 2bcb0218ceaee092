"""Kind -> connector class. Each connector module registers itself with :func:`register`."""

from __future__ import annotations

import importlib

from connectors.base import Connector
from connectors.exceptions import ConfigurationError

_MODULES = {
    "http": "connectors.http",
    "graph": "connectors.graph",
    "ews": "connectors.ews",
    "google": "connectors.google",
    "slack": "connectors.slack",
    "adp": "connectors.adp",
}
_REGISTRY: dict[str, type[Connector]] = {}


def register(cls: type[Connector]) -> type[Connector]:
    _REGISTRY[cls.kind] = cls
    return cls


def connector_class(kind: str) -> type[Connector]:
    if kind not in _REGISTRY:
        module = _MODULES.get(kind)
        if module is None:
            raise ConfigurationError(f"unknown destination kind {kind!r} (known: {', '.join(_MODULES)})")
        importlib.import_module(module)
    if kind not in _REGISTRY:
        raise ConfigurationError(f"destination kind {kind!r} has no connector yet")
    return _REGISTRY[kind]
