"""Schemas, governed: every version of every schema in schemas/avro/ against every earlier one.

The rule (docs/producing.md, "Schemas and compatibility"): every absync schema is FULL_TRANSITIVE:

- BACKWARD: a new version reads the records of every earlier version (absync reads what older
  producers, and older absync workers, wrote);
- FORWARD: every earlier version reads the records of a new one (consumers of absync's own topics, and
  absync workers not yet upgraded, read what a new absync writes).

Earlier versions are the frozen files of schemas/avro/ (``<name>.v<N>.avsc``, listed in
schemas/avro/released.json with their digests), not git history. Records are written with one version
and read with the other by fastavro's schema resolution, from generated samples that cover every
union branch (every optional field absent and present) and every enum symbol, plus random ones.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import re
from typing import Any

import fastavro
import pytest

from schemas.codec import (
    AVRO_DIR,
    LEGACY_WRITERS,
    SCHEMA_FILES,
    SINGLE_OBJECT_MAGIC,
    _fingerprint,
    _full_name,
    _inline,
    _legacy_fingerprint,
    _raw,
    _versions,
    codec_for,
)
from tests.avro_samples import random_samples, samples

BACKWARD = {"AbsenceEvent", "Delivery", "DeliveryStatus", "Command", "Destination"}
"""Schemas whose new versions must read every earlier version's records: all of them."""
FORWARD = {"AbsenceEvent", "Delivery", "DeliveryStatus", "Command", "Destination"}
"""Schemas whose earlier versions must read a new version's records: those of topics absync writes and
others read (delivery-status: the viewer principal; deliveries and delay topics, commands, destinations:
workers of the previous release during a rolling upgrade; absences and resync: AbsenceEvent, also
embedded in Delivery)."""

RELEASED = AVRO_DIR / "released.json"
FILE_NAME = re.compile(r"^(?P<stem>[a-z0-9_]+)\.v(?P<version>[1-9][0-9]*)\.avsc$")


def digest(text: str) -> str:
    """SHA-256 of the schema's JSON, whitespace and key order aside (docs and defaults count)."""
    normal = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(normal.encode()).hexdigest()


def write(schema: Any, record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
    return buffer.getvalue()


def read(data: bytes, writer: Any, reader: Any) -> Any:
    stream = io.BytesIO(data)
    record = fastavro.schemaless_reader(stream, fastavro.parse_schema(writer), fastavro.parse_schema(reader))
    assert stream.tell() == len(data), "the reader did not consume the whole record"
    return record


def enum_defaults(schema: Any) -> set[str]:
    """The default symbols of the schema's enums (what a reader substitutes for a symbol it lacks)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if node.get("type") == "enum" and "default" in node:
                found.add(node["default"])
            for key in ("type", "items", "values"):
                if key in node:
                    walk(node[key])
            for field in node.get("fields", []):
                walk(field["type"])

    walk(schema)
    return found


def same_where_shared(written: Any, resolved: Any, defaults: set[str], path: str = "") -> None:
    """Every value the two versions share came through unchanged (fields only one of them has aside);
    an enum symbol the reader lacks may become the reader's enum default."""
    if isinstance(written, dict) and isinstance(resolved, dict):
        for key in written.keys() & resolved.keys():
            same_where_shared(written[key], resolved[key], defaults, f"{path}.{key}")
    elif isinstance(written, list) and isinstance(resolved, list):
        assert len(written) == len(resolved), path
        for i, (a, b) in enumerate(zip(written, resolved, strict=True)):
            same_where_shared(a, b, defaults, f"{path}[{i}]")
    elif written != resolved:
        assert isinstance(written, str) and resolved in defaults, f"{path}: {written!r} read as {resolved!r}"


def check_reads(writer: Any, reader: Any) -> int:
    """Writes the samples of ``writer`` and reads them with ``reader``; returns how many were checked.
    Raises (fastavro's SchemaResolutionError, or an AssertionError) where the reader cannot."""
    defaults = enum_defaults(reader)
    records = samples(writer) + random_samples(writer)
    for record in records:
        data = write(writer, record)
        as_written = read(data, writer, writer)
        same_where_shared(as_written, read(data, writer, reader), defaults)
    return len(records)


def version_pairs(names: set[str]) -> list[tuple[str, int, int]]:
    """(name, older, newer) for every two versions of each schema (transitive, not only neighbours)."""
    return [
        (name, older, newer)
        for name in sorted(names)
        for newer in range(len(_versions(name)))
        for older in range(newer)
    ]


def test_every_schema_file_is_a_released_version() -> None:
    """Every .avsc is ``<stem>.v<N>.avsc``, listed in SCHEMA_FILES in version order, and released."""
    files = sorted(p.name for p in AVRO_DIR.glob("*.avsc"))
    listed = sorted(f for versions in SCHEMA_FILES.values() for f in versions)
    assert files == listed, "each .avsc must be listed in schemas/codec.py SCHEMA_FILES"
    for name, versions in SCHEMA_FILES.items():
        stems = {FILE_NAME.match(f).group("stem") for f in versions}  # type: ignore[union-attr]
        assert len(stems) == 1, f"{name}: one file stem per schema"
        numbers = [int(FILE_NAME.match(f).group("version")) for f in versions]  # type: ignore[union-attr]
        assert numbers == list(range(1, len(versions) + 1)), f"{name}: versions 1..n, oldest first"
        assert {json.loads((AVRO_DIR / f).read_text())["name"] for f in versions} == {name}
    released = json.loads(RELEASED.read_text())
    assert sorted(released) == files, "each .avsc must be in schemas/avro/released.json"


@pytest.mark.parametrize("file", sorted(json.loads(RELEASED.read_text())))
def test_a_released_version_is_frozen(file: str) -> None:
    """A released file never changes (a change is a new version file): its digest is pinned."""
    pinned = json.loads(RELEASED.read_text())[file]
    assert digest((AVRO_DIR / file).read_text()) == pinned, (
        f"{file} was released and is frozen: add a new version file instead of editing it"
    )


@pytest.mark.parametrize(("name", "older", "newer"), version_pairs(BACKWARD))
def test_backward_a_new_version_reads_every_earlier_ones_records(name: str, older: int, newer: int) -> None:
    versions = _versions(name)
    assert check_reads(writer=versions[older], reader=versions[newer]) >= 25


@pytest.mark.parametrize(("name", "older", "newer"), version_pairs(FORWARD))
def test_forward_every_earlier_version_reads_a_new_ones_records(name: str, older: int, newer: int) -> None:
    versions = _versions(name)
    assert check_reads(writer=versions[newer], reader=versions[older]) >= 25


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_the_codec_reads_every_versions_single_object_records(name: str) -> None:
    """absync itself reads records of any version by their fingerprint (and Delivery's legacy one)."""
    writers = [(raw, _fingerprint(fastavro.parse_schema(raw))) for raw in _versions(name)]
    legacy = _legacy_fingerprint(name)
    if legacy is not None:
        pinned = LEGACY_WRITERS[name]
        types = {_full_name(raw): raw for raw in map(_raw, pinned[1:])}
        writers.append((_inline(_raw(pinned[0]), types), legacy))
    assert len({fingerprint for _, fingerprint in writers}) == len(writers), "fingerprints must differ"
    defaults = enum_defaults(_versions(name)[-1])
    for raw, fingerprint in writers:
        for record in samples(raw):
            data = SINGLE_OBJECT_MAGIC + fingerprint + write(raw, record)
            same_where_shared(read(data[10:], raw, raw), codec_for(name).decode(data), defaults)


# -- the check catches what it must: evolutions that break the rule --------------------------------


def _event_v2() -> Any:
    return copy.deepcopy(_versions("AbsenceEvent")[-1])


def test_the_check_refuses_a_new_field_without_a_default() -> None:
    broken = _event_v2()
    broken["fields"].append({"name": "site", "type": "string"})
    with pytest.raises(fastavro.read.SchemaResolutionError):
        check_reads(writer=_event_v2(), reader=broken)  # BACKWARD broken


def test_the_check_refuses_removing_a_field_without_a_default() -> None:
    broken = _event_v2()
    broken["fields"] = [f for f in broken["fields"] if f["name"] != "version"]
    check_reads(writer=_event_v2(), reader=broken)  # BACKWARD holds: the reader ignores it
    with pytest.raises(fastavro.read.SchemaResolutionError):
        check_reads(writer=broken, reader=_event_v2())  # FORWARD broken: old readers need it


def test_the_check_refuses_a_new_enum_symbol_unless_old_readers_have_a_default() -> None:
    grown = _event_v2()
    change = next(f for f in grown["fields"] if f["name"] == "change")
    change["type"]["symbols"].append("RESTORED")
    check_reads(writer=_event_v2(), reader=grown)  # BACKWARD holds
    with pytest.raises(fastavro.read.SchemaResolutionError):
        check_reads(writer=grown, reader=_event_v2())  # FORWARD broken: RESTORED unknown
    with_default = _event_v2()
    next(f for f in with_default["fields"] if f["name"] == "change")["type"]["default"] = "UPDATED"
    check_reads(writer=grown, reader=with_default)  # an old reader with a default reads it


def test_the_check_refuses_a_changed_type() -> None:
    broken = _event_v2()
    next(f for f in broken["fields"] if f["name"] == "version")["type"] = "string"
    with pytest.raises(fastavro.read.SchemaResolutionError):
        check_reads(writer=_event_v2(), reader=broken)


def test_delivery_keeps_writing_its_legacy_fingerprint_until_a_new_version() -> None:
    """The spec fingerprint of Delivery (its AbsenceEvent inlined) is read from now on; the legacy one
    stays the one written while it describes the newest versions, so workers of the previous release
    can still read what this one writes during a rolling upgrade."""
    spec = _fingerprint(fastavro.parse_schema(_versions("Delivery")[-1]))
    legacy = _legacy_fingerprint("Delivery")
    assert legacy is not None and legacy != spec
    newest = [SCHEMA_FILES["Delivery"][-1], SCHEMA_FILES["AbsenceEvent"][-1]]
    written = codec_for("Delivery").fingerprint
    if LEGACY_WRITERS["Delivery"] == newest:
        assert written == legacy
    else:  # AbsenceEvent v3 came: the spec fingerprint is written, the legacy one still read
        assert written == spec
        assert legacy in codec_for("Delivery")._writers
