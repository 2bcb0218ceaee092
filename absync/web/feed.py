"""One change feed per process: the live console's source, read once, shared by every stream.

Where the changes come from
    The view, through ``deliveries.change_seq`` (migration 0006): the projection numbers every row
    it writes, in commit order, so ``change_seq > last`` misses nothing and needs no lookback. The
    view rather than the ``delivery-status`` topic because the view is what a page loads: the live
    rows and a reload come from the same merged rows (out-of-order facts, superseded, manual marks:
    the projection's rule, applied once), the web process needs no Kafka consumer (nor its ACLs),
    and the attempt records with their payloads, which the page does not show, are never decoded.

What it costs
    One indexed query per ``poll_seconds`` while at least one stream is open (none otherwise), one
    JSON serialisation per changed row, one read of ``delivery_counts`` (a few rows per tenant and
    destination) per tick that saw a change, and one token check for all the streams together every
    ``recheck_seconds``. None of it grows with the number of streams; what does is a dict entry per
    changed delivery and stream (the serialised text is shared) and the bytes each stream writes.

What a subscriber gets
    The rows it may see (a tenant token: its tenant only; optionally one destination), coalesced:
    :class:`Subscriber` keeps the *latest* text per delivery until its stream takes them, at most
    ``max_pending`` deliveries. One more and it is dropped from the feed and told to resync (reload
    the page): a stream that cannot keep up never makes the feed, or the other streams, wait, and
    its memory stays bounded. A subscriber whose token is revoked or expires, or whose console
    session ends, is closed as ``unauthorized`` within ``recheck_seconds``.

How many
    At most ``max_per_token`` streams per token (a console user's tabs share one) and
    ``max_streams`` in the process: one more is refused (:class:`TooManyStreams`, a 429 with
    ``Retry-After``), so a leaked or hostile token cannot hold the process's connections and memory.
"""

from __future__ import annotations

import asyncio
import enum
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog
from sqlalchemy.engine import Engine

from absync.web.auth import active_credentials
from projections import queries
from schemas.delivery import Status

log = structlog.get_logger(__name__)

POLL_SECONDS = 0.5
MAX_PENDING = 2000
MAX_STREAMS_PER_TOKEN = 16
MAX_STREAMS = 500
"""Distinct deliveries a subscriber may hold before it is told to resync (at ~500 changes per
second, a stream four seconds behind)."""
RECHECK_SECONDS = 2.0

Serialise = Callable[[queries.DeliverySummary], str]


class TooManyStreams(Exception):
    """A new stream past ``max_per_token`` for its token, or ``max_streams`` in the process."""

    retry_after = 30


class Closed(enum.StrEnum):
    """Why a subscriber stopped: its stream sends the matching event (or nothing) and ends."""

    RESYNC = "resync"
    UNAUTHORIZED = "unauthorized"
    STOPPING = "stopping"


@dataclass(frozen=True, slots=True)
class Change:
    """One row as written by the projection, serialised once for every stream."""

    seq: int
    delivery_id: str
    tenant: str
    destination_id: str
    text: str


@dataclass(frozen=True, slots=True)
class Scope:
    """What a subscriber may see and asked for: ``tenant`` None = every tenant (the token's right)."""

    tenant: str | None
    destination: str | None = None

    def sees(self, change: Change) -> bool:
        return (self.tenant is None or change.tenant == self.tenant) and (
            self.destination is None or change.destination_id == self.destination
        )


@dataclass(slots=True)
class Batch:
    """What a stream sends in one event: the latest text of each changed delivery, and the
    counters when they changed since its previous batch."""

    items: list[str]
    counts: str | None

    def json(self) -> str:
        tail = f',"stats":{self.counts}' if self.counts is not None else ""
        return '{"items":[' + ",".join(self.items) + "]" + tail + "}"


@dataclass(eq=False)
class Subscriber:
    """One open stream's place in the feed. Touched only from the event loop."""

    scope: Scope
    token_hash: str
    session_key: str | None
    max_pending: int
    pending: dict[str, str] = field(default_factory=dict)
    closed: Closed | None = None
    counts_sent: int = -1
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, change: Change) -> bool:
        """Keeps the latest text of ``change``'s delivery; False (and told to resync) when that
        would hold more than ``max_pending`` deliveries."""
        if self.closed is not None:
            return False
        self.pending.pop(change.delivery_id, None)  # re-inserted last: the order of latest changes
        self.pending[change.delivery_id] = change.text
        if len(self.pending) > self.max_pending:
            self.close(Closed.RESYNC)
            return False
        self.wake.set()
        return True

    def close(self, reason: Closed) -> None:
        if self.closed is None:
            self.closed = reason
            self.pending = {}
        self.wake.set()

    def take(self, counts: Counters) -> Batch | None:
        """What is pending (emptied), with the counters if they moved; None if nothing."""
        text = None
        if counts.version != self.counts_sent:
            text = counts.text(self.scope)
            self.counts_sent = counts.version
        if not self.pending and text is None:
            return None
        items, self.pending = list(self.pending.values()), {}
        return Batch(items, text)


@dataclass
class Counters:
    """``delivery_counts`` as last read: (tenant, destination, status) -> n; texts per scope cached
    until the next read."""

    rows: dict[tuple[str, str, str], int] = field(default_factory=dict)
    version: int = 0
    _texts: dict[Scope, str] = field(default_factory=dict)

    def replace(self, rows: dict[tuple[str, str, str], int]) -> None:
        if rows != self.rows:
            self.rows, self.version, self._texts = rows, self.version + 1, {}

    def text(self, scope: Scope) -> str:
        """``{"counts": {status: n, every status}, "total": n}`` for ``scope`` (as ``/stats``)."""
        cached = self._texts.get(scope)
        if cached is None:
            counts = dict.fromkeys((s.value for s in Status), 0)
            for (tenant, destination, status), n in self.rows.items():
                if scope.tenant not in (None, tenant) or scope.destination not in (None, destination):
                    continue
                if status in counts:
                    counts[status] += n
            cached = json.dumps({"counts": counts, "total": sum(counts.values())}, separators=(",", ":"))
            self._texts[scope] = cached
        return cached


class ChangeFeed:
    """Reads the view's changes once for every subscriber of this process (see the module)."""

    def __init__(
        self,
        engine: Engine,
        serialise: Serialise,
        *,
        stopping: threading.Event | None = None,
        poll_seconds: float = POLL_SECONDS,
        max_pending: int = MAX_PENDING,
        recheck_seconds: float = RECHECK_SECONDS,
        max_per_token: int = MAX_STREAMS_PER_TOKEN,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        self.engine = engine
        self.serialise = serialise
        self.stopping = stopping or threading.Event()
        self.poll_seconds = poll_seconds
        self.max_pending = max_pending
        self.recheck_seconds = recheck_seconds
        self.max_per_token = max_per_token
        self.max_streams = max_streams
        self.counts = Counters()
        self.subscribers: set[Subscriber] = set()
        self.resyncs = 0
        """Subscribers told to resync since start (for tests and metrics)."""
        self._last_seq = 0
        self._task: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()

    async def subscribe(self, scope: Scope, token_hash: str, session_key: str | None = None) -> Subscriber:
        """A new subscriber, sent every change written from now on. Starts the feed if it was idle
        (its first read is the current position: what the view holds already is not a change).
        Raises :class:`TooManyStreams` past the bounds (see the module docstring)."""
        async with self._start_lock:
            if len(self.subscribers) >= self.max_streams:
                raise TooManyStreams(f"{self.max_streams} live streams are open on this process")
            if sum(s.token_hash == token_hash for s in self.subscribers) >= self.max_per_token:
                raise TooManyStreams(f"{self.max_per_token} live streams are open with this token: close one")
            if self._task is None or self._task.done():
                self._last_seq = await asyncio.to_thread(self._position)
                self.counts.replace(await asyncio.to_thread(self._read_counts))
                self._task = asyncio.create_task(self._run(), name="change-feed")
            subscriber = Subscriber(scope, token_hash, session_key, self.max_pending)
            subscriber.counts_sent = self.counts.version  # the page loaded them itself
            self.subscribers.add(subscriber)
        log.info("live stream subscribed", subscribers=len(self.subscribers), tenant=scope.tenant)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Removes ``subscriber``; the last one out stops the reads (the next one starts them)."""
        self.subscribers.discard(subscriber)
        subscriber.close(Closed.STOPPING)
        if not self.subscribers and self._task is not None:
            self._task.cancel()
            self._task = None

    async def close(self) -> None:
        """Closes every subscriber and stops reading."""
        self.stopping.set()
        for subscriber in list(self.subscribers):
            self.unsubscribe(subscriber)
        await asyncio.sleep(0)  # the cancelled task ends

    # -- the loop ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        """Ticks while anyone listens; ends when the last subscriber left or the server stops."""
        checked = time.monotonic()
        try:
            while self.subscribers and not self.stopping.is_set():
                top = await asyncio.to_thread(self._position)
                if top < self._last_seq:  # the view was emptied and rebuilt from Kafka
                    self._last_seq = top
                    self._resync_all()
                changes, counts = await asyncio.to_thread(self._read_changes, self._last_seq)
                if changes:
                    self._last_seq = changes[-1].seq
                if counts is not None:
                    self.counts.replace(counts)
                self._broadcast(changes)
                if time.monotonic() - checked >= self.recheck_seconds:
                    await self._recheck()
                    checked = time.monotonic()
                await asyncio.sleep(self.poll_seconds)
        except Exception:  # a database outage: the streams end, the pages reconnect later
            log.exception("change feed failed: its streams end")
            for subscriber in list(self.subscribers):
                self.subscribers.discard(subscriber)
                subscriber.close(Closed.STOPPING)
        if self.stopping.is_set():
            for subscriber in list(self.subscribers):
                self.unsubscribe(subscriber)

    def _broadcast(self, changes: Iterable[Change]) -> None:
        by_tenant: dict[str | None, list[Subscriber]] = {}
        for subscriber in self.subscribers:
            by_tenant.setdefault(subscriber.scope.tenant, []).append(subscriber)
        everyone = by_tenant.get(None, [])
        dropped: set[Subscriber] = set()
        for change in changes:
            for subscriber in (*by_tenant.get(change.tenant, ()), *everyone):
                if subscriber in dropped or not subscriber.scope.sees(change):
                    continue
                if not subscriber.offer(change):
                    dropped.add(subscriber)
        for subscriber in dropped:
            self.subscribers.discard(subscriber)
            self.resyncs += 1
            log.warning("live stream fell behind: told to resync", max_pending=self.max_pending)
        if self.counts.version:
            for subscriber in self.subscribers:
                if subscriber.counts_sent != self.counts.version:
                    subscriber.wake.set()

    def _resync_all(self) -> None:
        log.warning("the view was rebuilt: every live stream is told to resync")
        for subscriber in list(self.subscribers):
            self.subscribers.discard(subscriber)
            subscriber.close(Closed.RESYNC)
            self.resyncs += 1

    async def _recheck(self) -> None:
        """One query for every subscriber's token (and console session): gone = closed."""
        subscribers = list(self.subscribers)
        tokens = {s.token_hash for s in subscribers}
        sessions = {s.session_key for s in subscribers if s.session_key is not None}
        live_tokens, live_sessions = await asyncio.to_thread(
            active_credentials, self.engine, tokens, sessions
        )
        for subscriber in subscribers:
            if subscriber.token_hash not in live_tokens or (
                subscriber.session_key is not None and subscriber.session_key not in live_sessions
            ):
                self.subscribers.discard(subscriber)
                subscriber.close(Closed.UNAUTHORIZED)
                log.info("live stream closed: its token is no longer valid")

    # -- reads (in a worker thread) -----------------------------------------------------------------

    def _position(self) -> int:
        return queries.change_position(self.engine)

    def _read_counts(self) -> dict[tuple[str, str, str], int]:
        return queries.all_counts(self.engine)

    def _read_changes(self, last: int) -> tuple[list[Change], dict[tuple[str, str, str], int] | None]:
        """Every row written after number ``last`` (serialised), then the counters if any changed."""
        changes: list[Change] = []
        with self.engine.connect() as conn:
            while True:
                rows = queries.changes_after(conn, last)
                for seq, row in rows:
                    changes.append(
                        Change(seq, row.delivery_id, row.tenant, row.destination_id, self.serialise(row))
                    )
                    last = seq
                if len(rows) < queries.CHANGES_PAGE:
                    break
            counts = queries.all_counts(conn) if changes else None
        return changes, counts
