"""The delivery worker's connectors: one set-up connector per destination (:class:`ConnectorCache`).

Connectors are built only through :func:`connectors.registry.delivery_connector_class`, from the destination
as re-read at send time, with its secrets decrypted here (a secret that cannot be decrypted is a
:class:`connectors.exceptions.ConfigurationError`, never a crash).
"""

from __future__ import annotations

import asyncio

from connectors.base import Connector, ConnectorOptions
from connectors.exceptions import ConfigurationError
from connectors.registry import delivery_connector_class
from schemas.destination import Destination
from streams.secrets import SecretBox, SecretDecryptionError


class ConnectorCache:
    """One set-up connector per destination, rebuilt when its revision changes.

    The old connector is closed at once: a call it still has in flight fails and is retried.
    At most one connector of a destination is being built at a time (a lock per destination).
    Event-loop only.
    """

    def __init__(self, box: SecretBox, options: ConnectorOptions) -> None:
        self._box = box
        self._options = options
        self._items: dict[str, tuple[int, Connector]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, destination: Destination) -> Connector:
        """Raises a ConnectorError (ConfigurationError) when the destination cannot be built."""
        async with self._locks.setdefault(destination.id, asyncio.Lock()):
            cached = self._items.get(destination.id)
            if cached is not None and cached[0] == destination.revision:
                return cached[1]
            if cached is not None:
                del self._items[destination.id]
                await cached[1].close()
                cached[1].release_threads()
            try:
                secrets = self._box.decrypt_all(destination.secrets)
            except SecretDecryptionError as exc:
                raise ConfigurationError(str(exc)) from None
            connector = delivery_connector_class(destination.kind)(destination, secrets, self._options)
            await connector.setup()
            self._items[destination.id] = (destination.revision, connector)
            return connector

    async def close(self) -> None:
        """Closes every connector and releases its threads."""
        items, self._items = self._items, {}
        for _, connector in items.values():
            await connector.close()
            connector.release_threads()
