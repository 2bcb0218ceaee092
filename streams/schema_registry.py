"""The schema registry client of the settings (``ABSYNC_SCHEMA_REGISTRY_*``), or None without a URL."""

from __future__ import annotations

from schemas.registry import SchemaRegistryResolver
from streams.settings import Settings


def schema_registry(settings: Settings) -> SchemaRegistryResolver | None:
    """A new client (its cache is its own) for ``settings.schema_registry_url``; None when unset."""
    if not settings.schema_registry_url:
        return None
    password = settings.schema_registry_password
    return SchemaRegistryResolver(
        settings.schema_registry_url,
        username=settings.schema_registry_username,
        password=password.get_secret_value() if password is not None else None,
        ca_location=settings.schema_registry_ca_location,
        timeout=settings.schema_registry_timeout,
    )
