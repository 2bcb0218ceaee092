"""exchangelib's Protocol made safe under throttling: a session pool that never shrinks.

The deadlock (exchangelib 5.6.0, issue 18): on a server-busy answer, ``services/common.py``
(``_get_elements`` and ``_handle_backoff``) calls ``Protocol.decrease_poolsize`` even under
``FailFast``: for ``ErrorServerBusy``, ``ErrorExceededConnectionCount``, ``ErrorTooManyObjectsOpened``,
``ErrorInternalServerTransientError`` (an HTTP 503 among others) and ``ErrorTimeoutExpired`` (a
dropped connection among others). ``decrease_poolsize`` takes
``_session_pool_lock``, then takes a session with ``get_session``; when every session is in use,
``get_session`` calls ``increase_poolsize``, which takes the same non-reentrant lock: the thread
waits for itself, holding the lock, and every thread that wants a session waits for it forever.

Why a pool that never shrinks, rather than handling server-busy above exchangelib: the shrink is
reached from those five error types, not only from ``ErrorServerBusy``, and some of them (a 503, a
dropped connection) are not answers we could intercept before exchangelib's own handler runs.
Removing the shrink removes the re-entry on every path at its source. Shrinking buys nothing here anyway: the number of
calls in flight is set by the destination's own threads (``max_connections``,
:mod:`connectors.executor`), which equal the pool's size, and a throttled call goes to the retry
ladder.

:class:`ThrottleSafeProtocol` therefore:

- refuses to shrink (``decrease_poolsize`` raises ``SessionPoolMinSizeReached``, which exchangelib
  expects and suppresses, so the pool lock is never taken on that path);
- waits a bounded time for a session (``session_wait``) and then raises :class:`NoSessionAvailable`
  instead of waiting forever (a session can be held by a call abandoned past its deadline);
- sets ``RETRY_WAIT`` to 0: exchangelib puts its own back-off (10 s, doubled per try) into an
  ``ErrorServerBusy`` that Exchange sent without ``BackOffMilliseconds``; with 0, a back-off on the
  exception is Exchange's and no one else's;
- is built outside exchangelib's process-wide protocol cache, so it belongs to one destination.

Its retry policy must be ``FailFast``: nothing ever sleeps in a thread; back-off goes through the
delivery worker's retry topics.
"""

from __future__ import annotations

from contextlib import suppress
from queue import Empty
from typing import Any

from exchangelib import Configuration
from exchangelib.errors import SessionPoolMaxSizeReached, SessionPoolMinSizeReached
from exchangelib.protocol import Protocol


class NoSessionAvailable(RuntimeError):
    """Every session of the destination stayed in use for ``session_wait`` seconds."""


class ThrottleSafeProtocol(Protocol):  # type: ignore[misc]
    """A Protocol whose pool never shrinks and whose waits are bounded (see the module docstring)."""

    RETRY_WAIT = 0

    session_wait: float = 10.0

    @classmethod
    def build(cls, config: Configuration, *, timeout: float) -> ThrottleSafeProtocol:
        """A new protocol for one destination, outside exchangelib's shared cache."""
        protocol: ThrottleSafeProtocol = type.__call__(cls, config=config)
        protocol.TIMEOUT = timeout
        protocol.session_wait = timeout
        return protocol

    def decrease_poolsize(self) -> None:
        """Never shrinks (exchangelib suppresses this error where it shrinks on throttling)."""
        raise SessionPoolMinSizeReached("absync keeps the EWS session pool at max_connections")

    def get_session(self) -> Any:
        """A session from the pool, a new one while the pool is below its size, or after a bounded
        wait :class:`NoSessionAvailable`."""
        try:
            session = self._session_pool.get(block=False)
        except Empty:
            with suppress(SessionPoolMaxSizeReached):
                self.increase_poolsize()
            try:
                session = self._session_pool.get(timeout=self.session_wait)
            except Empty:
                raise NoSessionAvailable(
                    f"no EWS session came free within {self.session_wait:g} s "
                    f"(all {self._session_pool_maxsize} in use)"
                ) from None
        session.usage_count += 1
        return session
