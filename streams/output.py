"""What a processor writes: :class:`Output` (one record to produce in the current transaction)."""

from __future__ import annotations

from dataclasses import dataclass, field

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Output:
    """One record to produce inside the current transaction (value None = tombstone)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)
    partition: int | None = None
    """Explicit partition (state changelogs); None = the producer's partitioner (by key)."""
