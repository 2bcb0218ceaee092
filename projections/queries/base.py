"""What every query module shares: one connection for a call, from an ``Engine`` or a ``Connection``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection, Engine

Bind = Engine | Connection
"""A query runs on the caller's connection (inside its transaction) or on a fresh one of an engine."""


@contextmanager
def connection(bind: Bind) -> Iterator[Connection]:
    """``bind`` itself if it is a connection (left open), else a new one, closed on exit."""
    if isinstance(bind, Connection):
        yield bind
    else:
        with bind.connect() as conn:
            yield conn
