"""Sample records of any Avro schema, for the compatibility test: edge cases on purpose.

:func:`samples` returns ``width`` records of a schema (raw JSON, standalone): record *k* takes, in every
union, branch ``k mod n`` and, in every enum, symbol ``k mod n``, so that together they cover every
branch of every union (record 0 leaves every optional field absent: ``["null", ...]`` unions on null)
and every symbol of every enum; numbers, strings, bytes, arrays and maps cycle through their edge
values (0, negative, extremes, empty, non-ASCII, long). :func:`random_samples` adds random ones
(fastavro's generator, seeded).
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import fastavro
from fastavro.utils import generate_many

PRIMITIVE_EDGES: dict[str, list[Any]] = {
    "null": [None],
    "boolean": [False, True],
    "int": [0, 1, -1, 2**31 - 1, -(2**31)],
    "long": [0, 1, -1, 2**63 - 1, -(2**63)],
    "float": [0.0, 1.5, -2.25],
    "double": [0.0, 1.5, -2.25, 1e300],
    "bytes": [b"", b"\x00\xff", b"x" * 300],
    "string": ["", "é ✓ 日本", "s" * 300],
}
DATE_EDGES = [dt.date(1970, 1, 1), dt.date(2026, 2, 28), dt.date(1969, 12, 31), dt.date(9999, 12, 31)]
TIMESTAMP_EDGES = [
    dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
    dt.datetime(2026, 3, 29, 1, 30, 15, 250000, tzinfo=dt.UTC),
    dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
]


class _Walker:
    def __init__(self) -> None:
        self.named: dict[str, Any] = {}

    def full_name(self, name: str, namespace: str | None) -> str:
        return name if "." in name or not namespace else f"{namespace}.{name}"

    def lookup(self, name: str, namespace: str | None) -> Any:
        for candidate in (self.full_name(name, namespace), name):
            if candidate in self.named:
                return self.named[candidate]
        raise KeyError(f"unknown named type {name!r} in namespace {namespace!r}")

    def value(self, schema: Any, k: int, namespace: str | None) -> Any:
        if isinstance(schema, list):  # a union
            return self.value(schema[k % len(schema)], k, namespace)
        if isinstance(schema, str):
            if schema in PRIMITIVE_EDGES:
                edges = PRIMITIVE_EDGES[schema]
                return edges[k % len(edges)]
            definition, its_namespace = self.lookup(schema, namespace)
            return self.value(definition, k, its_namespace)
        kind = schema["type"]
        logical = schema.get("logicalType")
        if logical == "date" and kind == "int":
            return DATE_EDGES[k % len(DATE_EDGES)]
        if logical in ("timestamp-millis", "timestamp-micros") and kind == "long":
            return TIMESTAMP_EDGES[k % len(TIMESTAMP_EDGES)]
        if kind in ("record", "enum", "fixed"):
            namespace = schema.get("namespace", namespace)
            self.named[self.full_name(schema["name"], namespace)] = (schema, namespace)
        if kind == "record":
            return {f["name"]: self.value(f["type"], k, namespace) for f in schema["fields"]}
        if kind == "enum":
            return schema["symbols"][k % len(schema["symbols"])]
        if kind == "fixed":
            return bytes([k % 256]) * schema["size"]
        if kind == "array":
            return [] if k % 2 == 0 else [self.value(schema["items"], k + i, namespace) for i in range(2)]
        if kind == "map":
            if k % 2 == 0:
                return {}
            return {
                "": self.value(schema["values"], k, namespace),
                "ké": self.value(schema["values"], k + 1, namespace),
            }
        return self.value(kind, k, namespace)  # {"type": "string"} and the like


def width(schema: Any) -> int:
    """How many samples cover every union branch, enum symbol and edge value (at least 6)."""
    found = [6]

    def walk(node: Any) -> None:
        if isinstance(node, list):
            found.append(len(node))
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if node.get("type") == "enum":
                found.append(len(node["symbols"]))
            for key in ("type", "items", "values"):
                if key in node:
                    walk(node[key])
            for field in node.get("fields", []):
                walk(field["type"])

    walk(schema)
    return max(found)


def samples(schema: Any) -> list[dict[str, Any]]:
    """Deterministic samples of a standalone raw schema (see the module docstring)."""
    return [_Walker().value(schema, k, None) for k in range(width(schema))]


def random_samples(schema: Any, count: int = 25, seed: int = 13) -> list[dict[str, Any]]:
    """Random records of the schema (fastavro's generator under a fixed seed)."""
    state = random.getstate()
    random.seed(seed)
    try:
        return list(generate_many(fastavro.parse_schema(schema), count))
    finally:
        random.setstate(state)
