"""Projection logic (no Kafka): a batch of records -> rows of the view, in the caller's transaction.

Exactly-once into SQL
    The rows of a batch and the next offset of every partition it read are written in ONE
    transaction (``consumer_offsets``). A record below the stored offset was applied already and is
    skipped, so a batch replayed after a crash (or by a restarted runner) applies nothing twice.
    Kafka's group offsets are not used for correctness.

Which status a delivery shows (the rule)
    Every DeliveryStatus is a fact; a delivery's row keeps the status of the *latest* fact, where
    latest means the greatest ``occurred_at`` (ties: the later record in the partition, which is
    the order the worker wrote them, since the status topic is keyed by delivery id). So a late or
    duplicated PENDING that happened before a SUCCESSFUL never moves the row backwards.
    One exception: once an operator marked a delivery as processed (``manual`` SUCCESSFUL), an
    ``automatic`` fact (a retry already scheduled before the mark, failing later) no longer changes
    the status; only a later operator ``retry`` or ``replay`` does.
    Whatever the winner, every fact still counts: ``attempt_count`` is the greatest attempt seen,
    its attempt record (if any) is appended (keyed by ``status_id``, so never twice),
    ``created_at``/``updated_at`` are the first/last ``occurred_at`` seen. ``last_error`` is the
    error of the latest fact that carried one, unless the row is SUCCESSFUL or a SUCCESSFUL fact
    happened after that error: so a PENDING or SUPERSEDED winner without an error shows why the
    delivery is waiting, and a success clears it. The row keeps the latest error and the latest
    success with their times (``error_seen``, ``error_seen_at``, ``success_at``), so the result does
    not depend on the order the facts arrive in either. Nothing depends on the wall clock, so a rebuild
    from offset zero yields exactly the live view. ``delivery_counts`` (deliveries per tenant,
    destination and status) moves with the rows.

Commands are not projected: an operator's Retry or Mark as processed shows once the delivery
worker reports it as a DeliveryStatus (``trigger`` retry, or ``manual``).

Destinations
    The destinations topic (compacted, one partition) is mirrored: latest record per id, tombstone
    deletes. Secret *names* only are kept; their values never leave Kafka.

No record stops the projection
    Text is stored without NUL characters (PostgreSQL's text and JSON cannot hold U+0000): every NUL
    of a row, an attempt (a destination's response body may hold one) or a destination is replaced by
    U+FFFD before it is written (:func:`without_nul`). An undecodable record, and (in
    :mod:`projections.runner`) a record whose rows the database refuses, is *rejected*: listed in
    :attr:`BatchResult.rejected` for the runner to copy to the projection's dead-letter topic
    (``projection.invalid``), and its offset advances.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from projections import health
from projections.db import VIEW_TABLES, attempts, consumer_offsets, deliveries, delivery_counts, destinations
from schemas.codec import codec_for
from schemas.delivery import DeliveryStatus, Status
from schemas.destination import Destination
from schemas.errors import DecodeError

if TYPE_CHECKING:
    from projections.privacy import Privacy

log = structlog.get_logger(__name__)

CONSUMER = "projection"
"""The consumer name under which the runner stores its offsets."""

_CHUNK = 500  # ids per IN (...) query: well below every back-end's bind-parameter limit

Row = dict[str, Any]
TopicPartition = tuple[str, int]
CountKey = tuple[str, str, str]
"""(tenant, destination_id, status): the key of ``delivery_counts``."""


def _count_key(row: Row) -> CountKey:
    return row["tenant"], row["destination_id"], row["status"]


def _last_seen(facts: Sequence[DeliveryStatus]) -> Callable[[str], int]:
    """Sort key: the delivery ids of ``facts`` in the order they last appear (a reader of
    ``change_seq`` sees the rows in the order of their latest fact)."""
    last = {fact.delivery_id: index for index, fact in enumerate(facts)}
    return last.__getitem__


def _count_deltas(before: dict[str, Row], after: dict[str, Row]) -> Counter[CountKey]:
    """How ``delivery_counts`` moves when the rows go from ``before`` to ``after``."""
    deltas: Counter[CountKey] = Counter()
    for key, row in after.items():
        deltas[_count_key(row)] += 1
        if key in before:
            deltas[_count_key(before[key])] -= 1
    return deltas


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One Kafka record as read (the runner builds these from confluent-kafka messages)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class BatchResult:
    applied: int = 0
    """Records applied now (statuses and destination changes)."""
    already_applied: int = 0
    """Records below the stored offsets: skipped."""
    undecodable: int = 0
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    rejected: list[tuple[SourceRecord, str]] = field(default_factory=list)
    """Records not applied, with the reason: for the dead-letter topic."""


def without_nul(value: Any) -> Any:
    """``value`` with every U+0000 in its strings (dict keys and values, list items) replaced by
    U+FFFD: PostgreSQL cannot store a NUL in text or JSON."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nul(v) for v in value]
    return value


def _checked(fact: DeliveryStatus) -> DeliveryStatus:
    """Rejects at decoding what the tables cannot hold, so one bad record cannot fail a batch."""
    dt.date.fromisoformat(fact.start_date)
    dt.date.fromisoformat(fact.end_date)
    return fact


def _status_wins(fact: DeliveryStatus, row: Row) -> bool:
    """Whether ``fact`` sets the status of ``row`` (see the module docstring)."""
    if row["manual"] and row["status"] == Status.SUCCESSFUL and fact.trigger.lower() == "automatic":
        return False
    return bool(fact.occurred_at >= row["status_at"])


def _shown_error(row: Row) -> str | None:
    """``last_error`` of a row from its status and the latest error and success it has seen."""
    if row["status"] == Status.SUCCESSFUL or row["error_seen_at"] is None:
        return None
    if row["success_at"] is not None and row["success_at"] >= row["error_seen_at"]:
        return None
    error: str | None = row["error_seen"]
    return error


def _seen(row: Row | None) -> Row:
    """The latest error and success a row has seen (rows written before they were kept: the shown
    error at the status time)."""
    if row is None:
        return {"error_seen": None, "error_seen_at": None, "success_at": None}
    if "error_seen_at" in row and (row["error_seen_at"] is not None or row["last_error"] is None):
        return {k: row[k] for k in ("error_seen", "error_seen_at", "success_at")}
    successful = row["status"] == Status.SUCCESSFUL
    return {
        "error_seen": row["last_error"],
        "error_seen_at": row["status_at"] if row["last_error"] is not None else None,
        "success_at": row.get("success_at") or (row["status_at"] if successful else None),
    }


def merge(row: Row | None, fact: DeliveryStatus) -> Row:
    """The delivery row after ``fact`` (pure: ``row`` is not modified)."""
    error = fact.error or (fact.attempt_record.error if fact.attempt_record else None)
    attempt = max(fact.attempt, fact.attempt_record.number if fact.attempt_record else 0)
    seen = _seen(row)
    if error and (seen["error_seen_at"] is None or fact.occurred_at >= seen["error_seen_at"]):
        seen["error_seen"], seen["error_seen_at"] = error, fact.occurred_at
    if fact.status == Status.SUCCESSFUL and (
        seen["success_at"] is None or fact.occurred_at > seen["success_at"]
    ):
        seen["success_at"] = fact.occurred_at
    if row is None:
        base: Row = {"attempt_count": 0, "created_at": fact.occurred_at, "updated_at": fact.occurred_at}
        wins = True
    else:
        base = dict(row)
        wins = _status_wins(fact, row)
    merged = {
        **base,
        **seen,
        "attempt_count": max(base["attempt_count"], attempt),
        "created_at": min(base["created_at"], fact.occurred_at),
        "updated_at": max(base["updated_at"], fact.occurred_at),
    }
    if wins:
        merged.update(
            {
                "delivery_id": fact.delivery_id,
                "destination_id": fact.destination_id,
                "tenant": fact.tenant,
                "absence_id": fact.absence_id,
                "version": fact.version,
                "change": fact.change,
                "operation": fact.operation,
                "employee_id": fact.employee_id,
                "employee_name": fact.employee_name,
                "employee_email": fact.employee_email,
                "start_date": dt.date.fromisoformat(fact.start_date),
                "end_date": dt.date.fromisoformat(fact.end_date),
                "status": fact.status.value,
                "manual": fact.manual,
                "trigger": fact.trigger.lower(),
                "next_retry_at": fact.next_retry_at,
                "status_at": fact.occurred_at,
            }
        )
    merged["last_error"] = _shown_error(merged)
    merged.setdefault("external_id", None)
    merged.setdefault("legal_entity_id", None)
    merged.setdefault("department_id", None)
    if wins and fact.legal_entity_id is not None:  # a v3 fact (an older one carries neither: kept)
        merged["legal_entity_id"], merged["department_id"] = fact.legal_entity_id, fact.department_id
    if fact.external_id and fact.status == Status.SUCCESSFUL and fact.occurred_at >= seen["success_at"]:
        merged["external_id"] = fact.external_id  # the created item, as of the latest success
    return {name: without_nul(value) for name, value in merged.items()}


def attempt_row(fact: DeliveryStatus) -> Row | None:
    record = fact.attempt_record
    if record is None:
        return None
    row: Row = {
        "status_id": fact.status_id,
        "delivery_id": fact.delivery_id,
        "number": record.number,
        "started_at": record.started_at,
        "duration_ms": record.duration_ms,
        "trigger": fact.trigger.lower(),
        "request_method": record.request_method,
        "request_url": record.request_url,
        "request_headers": dict(record.request_headers),
        "request_body": record.request_body,
        "response_status": record.response_status,
        "response_headers": dict(record.response_headers),
        "response_body": record.response_body,
        "error": record.error,
        "calls": [dict(call) for call in record.calls],
        "payload_dropped": False,
    }
    return {name: without_nul(value) for name, value in row.items()}


def destination_row(destination: Destination) -> Row:
    row: Row = {
        "id": destination.id,
        "tenant": destination.tenant,
        "name": destination.name,
        "kind": destination.kind,
        "enabled": destination.enabled,
        "filters": destination.filters.to_avro(),
        "changes": destination.changes.value,
        "settings": destination.settings,
        "secret_names": sorted(destination.secrets),
        "revision": destination.revision,
        "updated_at": destination.updated_at,
        "updated_by": destination.updated_by,
    }
    return {name: without_nul(value) for name, value in row.items()}


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def stored_offsets(
    conn: Connection, consumer: str = CONSUMER, *, lock: bool = False
) -> dict[TopicPartition, int]:
    """Next offset to read per (topic, partition); ``lock`` holds the rows until the transaction ends
    (PostgreSQL; SQLite's write transaction is exclusive anyway)."""
    query = sa.select(
        consumer_offsets.c.topic, consumer_offsets.c.partition, consumer_offsets.c.next_offset
    ).where(consumer_offsets.c.consumer == consumer)
    if lock:
        query = query.with_for_update()
    return {(topic, partition): offset for topic, partition, offset in conn.execute(query)}


def reset(conn: Connection, consumer: str = CONSUMER) -> None:
    """Empties the view tables and forgets the consumer's offsets (a rebuild starts from zero)."""
    for table in VIEW_TABLES:
        conn.execute(table.delete())
    conn.execute(consumer_offsets.delete().where(consumer_offsets.c.consumer == consumer))


class Projector:
    """Applies batches of records from the status and destinations topics."""

    def __init__(
        self,
        status_topic: str,
        destinations_topic: str,
        consumer: str = CONSUMER,
        privacy: Privacy | None = None,
    ) -> None:
        self.privacy = privacy
        """Erasures and payload retention applied to every fact (projections/privacy.py)."""
        self.status_topic = status_topic
        self.destinations_topic = destinations_topic
        self.consumer = consumer
        self._status_codec = codec_for("DeliveryStatus")
        self._destination_codec = codec_for("Destination")

    def apply(self, conn: Connection, records: Sequence[SourceRecord]) -> BatchResult:
        """Applies ``records`` (in partition order) inside the caller's transaction."""
        result = BatchResult()
        stored = stored_offsets(conn, self.consumer, lock=True)
        facts: list[DeliveryStatus] = []
        destination_changes: list[tuple[str, Destination | None]] = []
        for record in records:
            where = (record.topic, record.partition)
            if record.offset < stored.get(where, 0):
                result.already_applied += 1
                continue
            result.next_offsets[where] = max(result.next_offsets.get(where, 0), record.offset + 1)
            try:
                if record.topic == self.status_topic:
                    facts.append(_checked(DeliveryStatus.from_avro(self._status_codec.decode(record.value))))
                elif record.topic == self.destinations_topic:
                    destination_changes.append(self._destination_change(record))
                else:
                    raise DecodeError(f"not a topic of the projection: {record.topic}")
            except (DecodeError, KeyError, TypeError, ValueError) as exc:
                result.undecodable += 1
                result.rejected.append((record, f"undecodable: {type(exc).__name__}: {exc}"))
                log.error(
                    "undecodable record rejected",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    error=str(exc)[:1000],
                )
                continue
            result.applied += 1
        dropped: set[str] = set()
        if self.privacy is not None:
            facts, dropped = self.privacy.scrub(conn, facts)
        self._apply_facts(conn, facts, dropped)
        self._apply_destinations(conn, destination_changes)
        self._store_offsets(conn, stored, result.next_offsets)
        return result

    def skip(self, conn: Connection, record: SourceRecord) -> BatchResult:
        """Stores the offset past ``record`` without applying it (a record the database refused),
        inside the caller's transaction."""
        result = BatchResult()
        stored = stored_offsets(conn, self.consumer, lock=True)
        where = (record.topic, record.partition)
        if record.offset < stored.get(where, 0):
            result.already_applied += 1
            return result
        result.next_offsets[where] = record.offset + 1
        self._store_offsets(conn, stored, result.next_offsets)
        return result

    def _destination_change(self, record: SourceRecord) -> tuple[str, Destination | None]:
        if record.value is None:
            if not record.key:
                raise DecodeError("tombstone without a key")
            return record.key.decode(), None
        destination = Destination.from_avro(self._destination_codec.decode(record.value))
        return destination.id, destination

    def _apply_facts(self, conn: Connection, facts: Sequence[DeliveryStatus], dropped: set[str]) -> None:
        """Merges the facts into their rows in memory (in order), then writes each row once."""
        if not facts:
            return
        before: dict[str, Row] = {}
        for chunk in _chunks(sorted({fact.delivery_id for fact in facts})):
            query = sa.select(deliveries).where(deliveries.c.delivery_id.in_(chunk))
            before.update((found["delivery_id"], dict(found)) for found in conn.execute(query).mappings())
        after = dict(before)
        new_attempts: dict[str, Row] = {}
        for fact in facts:
            after[fact.delivery_id] = merge(after.get(fact.delivery_id), fact)
            attempt = attempt_row(fact)
            if attempt is not None:
                attempt["payload_dropped"] = fact.status_id in dropped
                new_attempts.setdefault(fact.status_id, attempt)
        # Numbered after every committed write: batches are serialised (the offsets locked above).
        seq = conn.execute(sa.select(sa.func.coalesce(sa.func.max(deliveries.c.change_seq), 0))).scalar_one()
        for number, key in enumerate(sorted(after, key=_last_seen(facts)), start=seq + 1):
            after[key]["change_seq"] = number
        inserts = [row for key, row in after.items() if key not in before]
        updates = [
            {"b_id": key, **{k: v for k, v in row.items() if k != "delivery_id"}}
            for key, row in after.items()
            if key in before
        ]
        if inserts:
            conn.execute(deliveries.insert(), inserts)
        if updates:
            # The SET columns are the keys of the parameter dictionaries.
            conn.execute(deliveries.update().where(deliveries.c.delivery_id == sa.bindparam("b_id")), updates)
        self._insert_attempts(conn, new_attempts)
        self._apply_counts(conn, _count_deltas(before, after))
        health.apply_facts(conn, facts)

    @staticmethod
    def _insert_attempts(conn: Connection, rows: dict[str, Row]) -> None:
        if not rows:
            return
        seen: set[str] = set()
        for chunk in _chunks(sorted(rows)):
            seen.update(
                conn.execute(sa.select(attempts.c.status_id).where(attempts.c.status_id.in_(chunk))).scalars()
            )
        fresh = [row for status_id, row in rows.items() if status_id not in seen]
        if fresh:
            conn.execute(attempts.insert(), fresh)

    @staticmethod
    def _apply_counts(conn: Connection, deltas: Counter[CountKey]) -> None:
        table = delivery_counts
        for (tenant, destination_id, status), delta in deltas.items():
            if not delta:
                continue
            key = (
                (table.c.tenant == tenant)
                & (table.c.destination_id == destination_id)
                & (table.c.status == status)
            )
            if not conn.execute(table.update().where(key).values(count=table.c.count + delta)).rowcount:
                conn.execute(
                    table.insert().values(
                        tenant=tenant, destination_id=destination_id, status=status, count=delta
                    )
                )

    @staticmethod
    def _apply_destinations(conn: Connection, changes: Sequence[tuple[str, Destination | None]]) -> None:
        for destination_id, destination in changes:
            previous = conn.execute(
                sa.select(destinations.c.enabled).where(destinations.c.id == destination_id)
            ).scalar()
            health.apply_destination(conn, destination_id, previous, destination)
            conn.execute(destinations.delete().where(destinations.c.id == destination_id))
            if destination is not None:
                conn.execute(destinations.insert().values(destination_row(destination)))

    def _store_offsets(
        self, conn: Connection, stored: dict[TopicPartition, int], next_offsets: dict[TopicPartition, int]
    ) -> None:
        table = consumer_offsets
        for (topic, partition), offset in next_offsets.items():
            key = (
                (table.c.consumer == self.consumer)
                & (table.c.topic == topic)
                & (table.c.partition == partition)
            )
            if (topic, partition) in stored:
                conn.execute(table.update().where(key).values(next_offset=offset))
            else:
                conn.execute(
                    table.insert().values(
                        consumer=self.consumer, topic=topic, partition=partition, next_offset=offset
                    )
                )
