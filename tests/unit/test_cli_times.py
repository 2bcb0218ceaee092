"""``--changed-since`` / ``--since`` of ``absync resync`` and ``replay-failed``: a time Kafka can look
records up by, or one clear line from argparse (a time before 1970 reached the broker, which answered
UNSUPPORTED_VERSION: a traceback)."""

from __future__ import annotations

import argparse
import datetime as dt

import pytest

from absync.commands.resync import parse_since


def test_a_time_kafka_cannot_look_up_is_refused_with_a_clear_line() -> None:
    assert parse_since("2026-03-01") == dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    assert parse_since("1970-01-01T00:00:00Z") == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    for text in ["1969-12-31T23:59:59Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]:
        with pytest.raises(argparse.ArgumentTypeError, match="not a time Kafka knows"):
            parse_since(text)
    for text in ["2026-03-01\x00", "yesterday"]:
        with pytest.raises(argparse.ArgumentTypeError, match="not a date"):
            parse_since(text)
    with pytest.raises(argparse.ArgumentTypeError, match="not a") as refused:
        parse_since("1" * 100_000)
    assert len(str(refused.value)) < 200  # the line quotes 40 characters of it, not 100 kB
