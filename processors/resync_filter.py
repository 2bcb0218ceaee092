"""Which absences a resync replays: the product's "initialisation from a date" and the scope filters.

Two different dates, never to be confused:

- ``ending_on_or_after`` (the absence's own date): every absence whose latest state ends on or after
  this date. This is the product's back-fill ("initialisation from a date"): a destination set up on
  1 March gets every absence still running or to come on 1 March, whenever it was entered.
- ``changed_since`` (the time the change was written to Kafka, :class:`processors.resync.ResyncRequest`):
  only absences whose latest record was written at or after it. This is an operator's tool (catch up
  after an outage, or after a destination was disabled), not a calendar date.

Both may be combined with ``legal_entity`` and ``department``; the destination's own filters always
apply. The filter is a pre-filter run on the latest state as read: the fan-out still decides from
its newest knowledge of each absence (:mod:`processors.resync`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from confluent_kafka import Message

from schemas.codec import AvroCodec
from schemas.errors import SchemaError
from schemas.models import AbsenceEvent, absence_key


@dataclass(frozen=True, slots=True)
class AbsenceScope:
    """The absence-side filters of a resync (``None``: no restriction)."""

    ending_on_or_after: dt.date | None = None
    """Only absences whose end date is this day or later (the absence's date, not the write time)."""
    legal_entity: str | None = None
    """Only absences of employees of this legal entity id."""
    department: str | None = None
    """Only absences of employees of this department id."""

    def accepts(self, event: AbsenceEvent) -> bool:
        """Whether ``event`` (an absence's latest state as read) is in scope."""
        employee = event.employee
        if self.ending_on_or_after is not None and event.absence.end_date < self.ending_on_or_after:
            return False
        if self.legal_entity is not None and employee.legal_entity_id != self.legal_entity:
            return False
        return self.department is None or employee.department_id == self.department

    def describe(self) -> dict[str, str | None]:
        """The scope as JSON-able text (checkpoint parameters, logs, the API's job)."""
        end = self.ending_on_or_after
        return {
            "ending_on_or_after": end.isoformat() if end is not None else None,
            "legal_entity": self.legal_entity,
            "department": self.department,
        }


def absence_key_of(codec: AvroCodec, msg: Message) -> bytes:
    """The record's ``<tenant>|<absence id>`` key. A key without ``|`` was written before the upgrade
    (absence id alone): the tenant comes from the value, so two tenants' old records of one absence id
    are still told apart (one decode per old record)."""
    key = msg.key() or b""
    if b"|" in key or msg.value() is None:
        return key
    try:
        record = codec.decode(msg.value())
        return absence_key(str(record["tenant"]), str(record["absence"]["id"])).encode()
    except (SchemaError, KeyError, TypeError):
        return key
