"""Avro schemas of absync's events and the code that reads and writes them.

This package imports nothing of ours: every other package may import it.

- ``avro/*.avsc``: the schemas, one file per version (old versions stay readable).
- :mod:`schemas.codec`: Avro single-object encoding (``0xC3 0x01`` + CRC-64-AVRO fingerprint + body),
  and the Confluent wire format (``0x00`` + schema id + body) when a schema registry is configured.
- :mod:`schemas.registry`: the Confluent-compatible schema registry client (schemas by id, cached;
  registration of ours).
- ``avro/released.json``: the digests of the released (frozen) versions; the compatibility rule is in
  docs/producing.md and tests/test_schema_compatibility.py holds every version to it.
- :mod:`schemas.models`: typed Python views of the records.
"""

from schemas.codec import AvroCodec, codec_for
from schemas.errors import DecodeError, SchemaError, SchemaNotFoundError, ValidationError
from schemas.models import (
    Absence,
    AbsenceEvent,
    AbsenceStatus,
    ChangeKind,
    Employee,
    HalfDay,
    LeaveAccount,
)
from schemas.registry import SchemaRegistryResolver

__all__ = [
    "Absence",
    "AbsenceEvent",
    "AbsenceStatus",
    "AvroCodec",
    "ChangeKind",
    "DecodeError",
    "Employee",
    "HalfDay",
    "LeaveAccount",
    "SchemaError",
    "SchemaNotFoundError",
    "SchemaRegistryResolver",
    "ValidationError",
    "codec_for",
]
