"""Dead-letter copies that can always be written, whatever the record they replace.

A processor that cannot handle a record writes a *copy* of it to a dead-letter topic and goes on.
The copy keeps the record's key, value and headers and adds why and where from:

- ``absync-error-kind``: a short word (``decode``, ``invalid``, ``too-large``, ``processing``...);
- ``absync-reason``: the reason in clear text (cut at :data:`REASON_CHARS` characters);
- ``absync-source-topic``, ``absync-source-partition``, ``absync-source-offset``: where it came from.

Guarantee: the copy is never larger than ``Settings.max_record_bytes`` (key + value + headers), so it
is accepted by librdkafka and by a broker at Kafka's defaults. A record whose copy would not fit is
written *truncated*: the key cut at :data:`TRUNCATED_KEY_BYTES`, the original headers kept while they
fit in :data:`TRUNCATED_HEADER_BYTES`, the value cut at :data:`TRUNCATED_VALUE_BYTES`, plus

- ``absync-truncated``: ``true``;
- ``absync-original-size``: the value's size in bytes;
- ``absync-original-sha256``: the hex SHA-256 of the whole value;
- ``absync-original-key-size`` and ``absync-original-headers``: the key's size, the header count.

The original stays in its source topic (at the coordinates given) until that topic's retention ends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from streams.output import Headers, Output

REASON_CHARS = 1000
TRUNCATED_KEY_BYTES = 1024
TRUNCATED_HEADER_BYTES = 16 * 1024
TRUNCATED_VALUE_BYTES = 64 * 1024
RECORD_OVERHEAD = 512
"""Bytes kept free for the record's framing (librdkafka counts some of it against its limit)."""


def as_headers(raw: object) -> Headers:
    """A consumed record's headers (list or dict, str or bytes values) as (name, bytes) pairs."""
    if not raw:
        return []
    pairs: Iterable[tuple[str, object]] = raw.items() if isinstance(raw, dict) else raw  # type: ignore[assignment]
    return [
        (str(name), value if isinstance(value, bytes) else str(value or "").encode()) for name, value in pairs
    ]


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """What a record weighs against the producer's limit (framing included)."""
    return (
        len(key or b"") + len(value or b"") + sum(len(name) + len(v) for name, v in headers) + RECORD_OVERHEAD
    )


def output_size(out: Output) -> int:
    return record_size(out.key, out.value, out.headers)


def cut_reason(reason: str) -> str:
    return reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 1] + "…"


def dead_letter_copy(
    topic: str,
    *,
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    source: tuple[str, int, int],
    kind: str,
    reason: str,
    max_bytes: int,
) -> Output:
    """The dead-letter copy of one record (see the module docstring): whole when it fits in
    ``max_bytes``, else truncated with the size and SHA-256 of the original value."""
    source_topic, partition, offset = source
    ours: Headers = [
        ("absync-error-kind", kind.encode()),
        ("absync-reason", cut_reason(reason).encode()),
        ("absync-source-topic", source_topic.encode()),
        ("absync-source-partition", str(partition).encode()),
        ("absync-source-offset", str(offset).encode()),
    ]
    whole = headers + ours
    if record_size(key, value, whole) <= max_bytes:
        return Output(topic, key, value, whole)
    kept: Headers = []
    header_bytes = 0
    for name, header_value in headers:
        header_bytes += len(name) + len(header_value)
        if header_bytes > TRUNCATED_HEADER_BYTES:
            break
        kept.append((name, header_value))
    original = value or b""
    ours += [
        ("absync-truncated", b"true"),
        ("absync-original-size", str(len(original)).encode()),
        ("absync-original-sha256", hashlib.sha256(original).hexdigest().encode()),
        ("absync-original-key-size", str(len(key or b"")).encode()),
        ("absync-original-headers", str(len(headers)).encode()),
    ]
    short_key = key[:TRUNCATED_KEY_BYTES] if key is not None else None
    room = max_bytes - record_size(short_key, b"", kept + ours)
    keep = max(0, min(TRUNCATED_VALUE_BYTES, room))
    short_value = original[:keep] if value is not None else None
    return Output(topic, short_key, short_value, kept + ours)
