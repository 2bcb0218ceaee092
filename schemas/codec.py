"""Avro encoding of absync's records.

Writing always uses Avro *single-object encoding*: ``0xC3 0x01``, the 8-byte little-endian
CRC-64-AVRO fingerprint of the writer schema, then the Avro binary body. Any Avro library can read it
with the ``.avsc`` files of this package.

Reading accepts single-object encoding written with any known version of a schema (old versions are
resolved to the newest one by Avro schema resolution; a schema that embeds another one, like Delivery,
is known with every version of the embedded one) and, when a :class:`SchemaRegistryResolver` is given,
the Confluent wire format (``0x00`` + 4-byte big-endian schema id + body), the writer schema fetched
from the registry by id and resolved to ours. :meth:`AvroCodec.encode_confluent` writes that format
for an id the registry gave (see :mod:`streams.publisher`).

How the schemas may evolve (and the test that holds them to it): docs/producing.md, "Schemas and
compatibility"; tests/test_schema_compatibility.py.
"""

from __future__ import annotations

import io
import itertools
import json
import struct
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema

from schemas.errors import DecodeError, SchemaNotFoundError
from schemas.registry import SchemaRegistryResolver as SchemaRegistryResolver

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
AVRO_DIR = Path(__file__).parent / "avro"

# name -> versions, oldest first. The last one is what we write.
SCHEMA_FILES: dict[str, list[str]] = {
    "AbsenceEvent": ["absence_event.v1.avsc", "absence_event.v2.avsc", "absence_event.v3.avsc"],
    "Delivery": ["delivery.v1.avsc"],
    "DeliveryStatus": ["delivery_status.v1.avsc", "delivery_status.v2.avsc", "delivery_status.v3.avsc"],
    "Command": ["command.v1.avsc"],
    "Destination": ["destination.v1.avsc", "destination.v2.avsc", "destination.v3.avsc"],
}
# Schemas that reference named types of another schema.
DEPENDS_ON: dict[str, list[str]] = {"Delivery": ["AbsenceEvent"]}
# Fingerprints written by earlier releases (see _legacy_fingerprint): the files they stand for.
LEGACY_WRITERS: dict[str, list[str]] = {"Delivery": ["delivery.v1.avsc", "absence_event.v2.avsc"]}

Record = dict[str, Any]


def _raw(file: str) -> Any:
    return json.loads((AVRO_DIR / file).read_text())


def _inline(node: Any, types: dict[str, Any]) -> Any:
    """``node`` with the first reference to each named type of ``types`` replaced by its definition
    (popped from ``types``): a standalone schema, as the Avro fingerprint must be computed from."""
    if isinstance(node, str):
        return types.pop(node) if node in types else node
    if isinstance(node, list):
        return [_inline(item, types) for item in node]
    if isinstance(node, dict):
        return {
            key: _inline(value, types) if key in ("type", "fields", "items", "values") else value
            for key, value in node.items()
        }
    return node


def _full_name(raw: Any) -> str:
    return f"{raw['namespace']}.{raw['name']}" if raw.get("namespace") else str(raw["name"])


def _versions(name: str) -> list[Any]:
    """Every version of ``name`` as a standalone raw schema, oldest first: each file with every
    combination of the versions of the schemas it embeds (a record written before a dependency got a
    new version stays readable). The last one is what we write."""
    dependencies = DEPENDS_ON.get(name, [])
    versions: list[Any] = []
    for file in SCHEMA_FILES[name]:
        for files in itertools.product(*(SCHEMA_FILES[d] for d in dependencies)):
            types = {_full_name(raw): raw for raw in map(_raw, files)}
            versions.append(_inline(_raw(file), types))
    return versions


def _legacy_fingerprint(name: str) -> bytes | None:
    """The fingerprint absync wrote for ``name`` before it inlined embedded schemas (fastavro's
    canonical form keeps a reference to a named type of another file as a bare name, so Delivery's
    fingerprint did not cover its AbsenceEvent): still read, as Delivery v1 with AbsenceEvent v2,
    the only combination written with it, and still written while that is the newest one (see
    AvroCodec)."""
    pinned = LEGACY_WRITERS.get(name)
    if pinned is None:
        return None
    named: dict[str, Any] = {}
    for file in pinned[1:]:
        fastavro.parse_schema(_raw(file), named_schemas=named)
    return _fingerprint(fastavro.parse_schema(_raw(pinned[0]), named_schemas=named))


def _fingerprint(parsed: Any) -> bytes:
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    # fastavro prints the CRC-64-AVRO fingerprint as the hex of its little-endian bytes.
    return bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))


class AvroCodec:
    """Encodes and decodes one record type; thread-safe, no I/O except registry look-ups."""

    def __init__(self, name: str, registry: SchemaRegistryResolver | None = None) -> None:
        self.name = name
        self._writers: dict[bytes, Any] = {}
        parsed: Any = None
        for raw in _versions(name):
            parsed = fastavro.parse_schema(raw)
            self._writers[_fingerprint(parsed)] = parsed
        self.schema: Any = parsed  # the last file with the last versions of its dependencies
        self.fingerprint = _fingerprint(parsed)
        legacy = _legacy_fingerprint(name)
        if legacy is not None and legacy not in self._writers:
            pinned = LEGACY_WRITERS[name]
            types = {_full_name(raw): raw for raw in map(_raw, pinned[1:])}
            self._writers[legacy] = fastavro.parse_schema(_inline(_raw(pinned[0]), types))
            newest = [SCHEMA_FILES[name][-1], *(SCHEMA_FILES[d][-1] for d in DEPENDS_ON.get(name, []))]
            if pinned == newest:
                # Workers of the release before this one know only the legacy fingerprint: it stays
                # the one written until the schema (or one it embeds) gets a new version, so a rolling
                # upgrade never hands an old worker a fingerprint it cannot read.
                self.fingerprint = legacy
        self.text = (AVRO_DIR / SCHEMA_FILES[name][-1]).read_text()
        """The newest schema as written in its file (what the publisher registers)."""
        self.registry = registry
        """The registry the Confluent wire format is read through, if any."""

    def encode(self, record: Mapping[str, Any]) -> bytes:
        buffer = io.BytesIO()
        buffer.write(SINGLE_OBJECT_MAGIC)
        buffer.write(self.fingerprint)
        fastavro.schemaless_writer(buffer, self.schema, dict(record))
        return buffer.getvalue()

    def encode_confluent(self, record: Mapping[str, Any], schema_id: int) -> bytes:
        """The Confluent wire format: ``0x00``, the registry's id of :attr:`text`, the Avro body."""
        buffer = io.BytesIO()
        buffer.write(CONFLUENT_MAGIC)
        buffer.write(struct.pack(">I", schema_id))
        fastavro.schemaless_writer(buffer, self.schema, dict(record))
        return buffer.getvalue()

    def decode(self, data: bytes | None) -> Record:
        if not data:
            raise DecodeError(f"empty value: not a {self.name}")
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < 10:
                raise DecodeError("truncated single-object header")
            writer = self._writers.get(data[2:10])
            if writer is None:
                raise SchemaNotFoundError(f"unknown schema fingerprint {data[2:10].hex()} for {self.name}")
            body = data[10:]
        elif data[:1] == CONFLUENT_MAGIC and self.registry is not None:
            if len(data) < 5:
                raise DecodeError("truncated Confluent wire-format header")
            (schema_id,) = struct.unpack(">I", data[1:5])
            writer = self.registry.schema(schema_id)
            body = data[5:]
        else:
            hint = " (Confluent wire format needs ABSYNC_SCHEMA_REGISTRY_URL)" if data[:1] == b"\x00" else ""
            raise DecodeError(f"not Avro single-object encoding: starts with {data[:2].hex()}{hint}")
        stream = io.BytesIO(body)
        try:
            record = fastavro.schemaless_reader(stream, writer, self.schema)
        except Exception as exc:  # fastavro raises many kinds on garbage
            raise DecodeError(f"cannot decode {self.name}: {type(exc).__name__}: {exc}") from exc
        if stream.tell() != len(body):
            raise DecodeError(f"{len(body) - stream.tell()} trailing bytes after {self.name}")
        if not isinstance(record, dict):
            raise DecodeError(f"decoded {self.name} is not a record")
        return record


@cache
def codec_for(name: str) -> AvroCodec:
    """The shared codec of one record type (without registry)."""
    return AvroCodec(name)
