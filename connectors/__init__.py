"""Connectors: one small class per destination kind, with a clear lifecycle.

``Connector(destination, secrets, options)`` does no I/O; ``await setup()`` opens clients;
``await deliver(delivery, recorder)`` makes one delivery; ``await close()`` releases everything.
See :mod:`connectors.base` and :mod:`connectors.exceptions`.
"""

from connectors.base import CallRecorder, Connector, ConnectorOptions, DeliveryOutcome
from connectors.exceptions import (
    BackpressureError,
    ConfigurationError,
    ConnectorError,
    PermanentError,
    RetryableError,
)

__all__ = [
    "BackpressureError",
    "CallRecorder",
    "ConfigurationError",
    "Connector",
    "ConnectorError",
    "ConnectorOptions",
    "DeliveryOutcome",
    "PermanentError",
    "RetryableError",
]
