"""Erasure of one employee's personal data from absync's compacted topics (``absync erase``, the
API's ``POST /erasures``; why each topic is handled as it is: docs/privacy.md).

A compacted topic keeps the latest record of every key forever, so time does not remove an
absence's personal data from it; a tombstone (a null value for the key) does, once the log cleaner
has run (``min.compaction.lag.ms``, then ``delete.retention.ms`` for the tombstone itself):

- ``absences``: a tombstone for every key under which a record of the employee (by email, any case)
  was written, and for its ``<tenant>|<absence id>`` key. The fan-out reads it as an erasure: it drops
  its state of the absence (a tombstone on ``fanout-state``), and sends nothing (an erasure is not a
  cancellation: what destinations hold is theirs, docs/privacy.md). The Slack projection drops its
  entry the same way (``daily-absences``). A resync skips tombstones, so no rebuild or resync can
  send the absence again.
- ``delivery-state`` (the delivery worker's latest delivery per destination and absence, holding the
  event): a tombstone for every key ``<destination>|<absence id>`` of an erased absence, in the
  partition it was found in; keys of another tenant's destinations are left alone.

Time-bound topics (``deliveries``, retries, ``resync``, ``commands``, dead letters,
``delivery-status``) are not rewritten: Kafka cannot delete one record from them; they age out
(docs/privacy.md says when), and the view's erasure ledger keeps ``delivery-status`` from showing the
employee again meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog
from confluent_kafka import Message

from processors.resync_io import KAFKA_TIMEOUT, ResyncError
from processors.validation import absence_codec
from schemas.destination import Destination
from schemas.errors import SchemaError
from schemas.models import absence_key
from streams.kafka import make_producer, produce, read_compacted
from streams.settings import Settings
from streams.topics import Topics

log = structlog.get_logger(__name__)


class ErasureError(ResyncError):
    """Kafka refused or did not acknowledge an erasure's tombstones (run it again: it is idempotent)."""


@dataclass
class FoundAbsence:
    tenant: str
    absence_id: str
    partition: int
    keys: set[bytes] = field(default_factory=set)
    """Every record key it was written under (and its ``tenant|id`` key)."""


@dataclass(frozen=True, slots=True)
class TopicErasure:
    absences: int
    tombstones: int


def _normal(email: str) -> str:
    return email.strip().casefold()


def find_absences(settings: Settings, email: str, tenant: str | None = None) -> list[FoundAbsence]:
    """The absences of ``absences`` with a record (latest or older, still in the topic) of ``email``."""
    codec = absence_codec(settings)
    target = _normal(email)
    found: dict[tuple[str, str], FoundAbsence] = {}

    def on_record(msg: Message) -> None:
        value = msg.value()
        if value is None:
            return
        try:
            record = codec.decode(value)
            record_email = record["employee"].get("email")
            record_tenant, absence_id = str(record["tenant"]), str(record["absence"]["id"])
        except (SchemaError, KeyError, TypeError, AttributeError):
            return  # unreadable: dead-lettered by the fan-out, holds nothing we can attribute
        if not isinstance(record_email, str) or _normal(record_email) != target:
            return
        if tenant is not None and record_tenant != tenant:
            return
        entry = found.setdefault(
            (record_tenant, absence_id), FoundAbsence(record_tenant, absence_id, msg.partition() or 0)
        )
        entry.keys.add(msg.key() or b"")
        entry.keys.add(absence_key(record_tenant, absence_id).encode())

    read_compacted(settings, Topics(settings).absences, on_record, timeout=KAFKA_TIMEOUT * 10)
    return sorted(found.values(), key=lambda a: (a.tenant, a.absence_id))


def _state_keys(
    settings: Settings, absences: list[FoundAbsence], destinations: Iterable[Destination]
) -> list[tuple[int, bytes]]:
    """(partition, key) of the ``delivery-state`` entries of the erased absences."""
    tenants_of = {d.id: d.tenant for d in destinations}
    erased: dict[str, set[str]] = {}
    for a in absences:
        erased.setdefault(a.absence_id, set()).add(a.tenant)
    keys: list[tuple[int, bytes]] = []

    def on_record(msg: Message) -> None:
        if msg.value() is None:
            return
        destination_id, sep, absence_id = (msg.key() or b"").decode(errors="replace").rpartition("|")
        if not sep or absence_id not in erased:
            return
        owner = tenants_of.get(destination_id)
        if owner is None or owner in erased[absence_id]:  # a deleted destination's, or the tenant's
            keys.append((msg.partition() or 0, msg.key() or b""))

    read_compacted(settings, Topics(settings).delivery_state, on_record, timeout=KAFKA_TIMEOUT * 10)
    return keys


def erase_from_topics(
    settings: Settings, absences: list[FoundAbsence], destinations: Iterable[Destination]
) -> TopicErasure:
    """Writes the tombstones (see the module docstring); returns how many. Idempotent."""
    topics = Topics(settings)
    tombstones: list[tuple[str, int, bytes]] = [
        (topics.absences, a.partition, key) for a in absences for key in sorted(a.keys)
    ]
    tombstones += [
        (topics.delivery_state, p, key) for p, key in _state_keys(settings, absences, destinations)
    ]
    producer = make_producer(settings)
    errors: list[str] = []

    def acknowledged(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    for topic, partition, key in tombstones:
        produce(producer, topic, key, None, wait=0.05, partition=partition, on_delivery=acknowledged)
    if producer.flush(KAFKA_TIMEOUT) != 0:
        raise ErasureError("Kafka did not acknowledge the erasure's tombstones in time: run it again")
    if errors:
        raise ErasureError(f"Kafka refused an erasure tombstone: {errors[0]}")
    log.info("erasure tombstones written", absences=len(absences), tombstones=len(tombstones))
    return TopicErasure(len(absences), len(tombstones))
