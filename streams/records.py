"""Reading a consumed record: where it came from and its headers (one place for every processor)."""

from __future__ import annotations

from confluent_kafka import Message


def coordinates(msg: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed record (never None for a record without error)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("not a consumed record")
    return topic, partition, offset


def header(msg: Message, name: str) -> bytes | None:
    """The value of the record's first header ``name``, None when it has none or an empty one."""
    headers = msg.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    for key, value in pairs:
        if key == name and value:
            return value if isinstance(value, bytes) else str(value).encode()
    return None
