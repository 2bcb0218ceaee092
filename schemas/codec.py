"""Avro encoding of absync's records.

Writing always uses Avro *single-object encoding*: ``0xC3 0x01``, the 8-byte little-endian
CRC-64-AVRO fingerprint of the writer schema, then the Avro binary body. Any Avro library can read it
with the ``.avsc`` files of this package.

Reading accepts single-object encoding written with any known version of a schema (old versions are
resolved to the newest one by Avro schema resolution) and, when a :class:`SchemaRegistryResolver` is
given, the Confluent wire format (``0x00`` + 4-byte schema id + body).
"""

from __future__ import annotations

import io
import json
import struct
import threading
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema

from schemas.errors import DecodeError, SchemaNotFoundError

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
AVRO_DIR = Path(__file__).parent / "avro"

# name -> versions, oldest first. The last one is what we write.
SCHEMA_FILES: dict[str, list[str]] = {
    "AbsenceEvent": ["absence_event.v1.avsc", "absence_event.v2.avsc"],
    "Delivery": ["delivery.v1.avsc"],
    "DeliveryStatus": ["delivery_status.v1.avsc"],
    "Command": ["command.v1.avsc"],
    "Destination": ["destination.v1.avsc"],
}
# Schemas that reference named types of another schema.
DEPENDS_ON: dict[str, list[str]] = {"Delivery": ["AbsenceEvent"]}

Record = dict[str, Any]


def _load(file: str, named: dict[str, Any]) -> Any:
    raw = json.loads((AVRO_DIR / file).read_text())
    return fastavro.parse_schema(raw, named_schemas=named)


def _fingerprint(parsed: Any) -> bytes:
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    # fastavro prints the CRC-64-AVRO fingerprint as the hex of its little-endian bytes.
    return bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))


class SchemaRegistryResolver:
    """Fetches writer schemas by id from a Confluent-compatible schema registry (read side only)."""

    def __init__(self, url: str, fetch: Callable[[str], str] | None = None) -> None:
        self._url = url.rstrip("/")
        self._fetch = fetch or self._http_fetch
        self._cache: dict[int, Any] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _http_fetch(url: str) -> str:
        import httpx

        response = httpx.get(url, timeout=10.0)
        response.raise_for_status()
        return str(response.json()["schema"])

    def schema(self, schema_id: int) -> Any:
        with self._lock:
            if schema_id not in self._cache:
                try:
                    text = self._fetch(f"{self._url}/schemas/ids/{schema_id}")
                except Exception as exc:
                    raise SchemaNotFoundError(f"schema id {schema_id} not found in registry: {exc}") from exc
                self._cache[schema_id] = fastavro.parse_schema(json.loads(text))
            return self._cache[schema_id]


class AvroCodec:
    """Encodes and decodes one record type; thread-safe, no I/O except registry look-ups."""

    def __init__(self, name: str, registry: SchemaRegistryResolver | None = None) -> None:
        named: dict[str, Any] = {}
        for dependency in DEPENDS_ON.get(name, []):
            _load(SCHEMA_FILES[dependency][-1], named)
        self.name = name
        self._writers: dict[bytes, Any] = {}
        parsed: Any = None
        for file in SCHEMA_FILES[name]:
            parsed = _load(file, dict(named))
            self._writers[_fingerprint(parsed)] = parsed
        self.schema: Any = parsed
        self.fingerprint = _fingerprint(parsed)
        self._registry = registry

    def encode(self, record: Mapping[str, Any]) -> bytes:
        buffer = io.BytesIO()
        buffer.write(SINGLE_OBJECT_MAGIC)
        buffer.write(self.fingerprint)
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
        elif data[:1] == CONFLUENT_MAGIC and self._registry is not None:
            if len(data) < 5:
                raise DecodeError("truncated Confluent wire-format header")
            (schema_id,) = struct.unpack(">I", data[1:5])
            writer = self._registry.schema(schema_id)
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
