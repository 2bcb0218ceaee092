"""The connectors' exceptions. The delivery processor decides what to do from the type alone.

::

    ConnectorError                  root: any failed delivery
    ├── RetryableError              try again later (timeout, connection error, 5xx): next delay topic
    │   └── BackpressureError       rate limited (429, 503 + Retry-After, Google rateLimitExceeded,
    │                               EWS ErrorServerBusy); never retried before ``retry_after`` seconds
    └── PermanentError              retrying cannot help (4xx, unknown mailbox): Error at once
        └── ConfigurationError      the destination is misconfigured (missing setting or secret,
                                    undecryptable secret, unmapped code)

Every error carries a message an operator can act on ("no mailbox for jane@acme.com").
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Root of every connector failure."""

    retryable: bool = False

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class RetryableError(ConnectorError):
    """A failure that may pass: the delivery goes to the next retry stage."""

    retryable = True


class BackpressureError(RetryableError):
    """The destination asks us to slow down; ``retry_after`` (seconds) is a floor for the next try."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, status_code: int | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class PermanentError(ConnectorError):
    """Retrying cannot help: the delivery goes to Error at once (an operator may still Retry)."""


class ConfigurationError(PermanentError):
    """The destination's configuration is wrong or incomplete."""
