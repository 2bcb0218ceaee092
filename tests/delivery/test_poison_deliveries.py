"""The delivery worker never stops on a record it cannot read (issue 12, item 1), on a real broker.

Garbage on ``deliveries`` (close to the broker's size limit, or with a key that is not UTF-8) and on
``commands`` used to be logged and skipped at best; now each is copied to ``deliveries.invalid``
(truncated, with size and SHA-256, when too large to copy whole), and every good delivery around them
is delivered.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from schemas.delivery import Status
from schemas.models import ChangeKind
from streams.kafka import make_producer
from streams.settings import Settings
from streams.topics import Topics
from tests.delivery.harness import Feed, RunningWorker, StatusLog, change, http_destination
from tests.fakes.receiver import Receiver
from tests.streams_helpers import at_least, headers_of, read_committed

pytestmark = pytest.mark.kafka


def test_unreadable_deliveries_and_commands_are_dead_lettered_and_the_good_ones_delivered(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    topics = Topics(settings)
    http_destination(settings, receiver.url + "/hook")
    big = os.urandom(999_892)
    bad: list[tuple[str, bytes, bytes]] = [
        (topics.deliveries, b"dst-http|abs-big", big),
        (topics.deliveries, b"dst-http|\xff\xfe", b"\xc3\x01not a delivery"),
        (topics.commands, b"dst-http|abs-cmd", b"garbage command"),
    ]
    good = [change(f"abs-{i}", 1, ChangeKind.CREATED) for i in range(6)]
    feed = Feed(settings)
    producer = make_producer(settings)
    with RunningWorker(settings):
        for i, (topic, key, value) in enumerate(bad):
            producer.produce(topic, key=key, value=value)
            assert producer.flush(30) == 0
            feed.deliveries(*good[2 * i : 2 * i + 2])
        statuses.wait(lambda log: all(log.latest(d.delivery_id) is Status.SUCCESSFUL for d in good), 90)
        letters = read_committed(settings, topics.deliveries_invalid, at_least(len(bad)))

    assert set(receiver.state) == {d.absence_id for d in good}
    assert len(letters) == len(bad)
    by_source = {
        tuple(headers_of(m)[f"absync-source-{part}"] for part in ("topic", "partition", "offset"))
        for m in letters
    }
    assert len(by_source) == len(bad)
    big_copy = next(m for m in letters if headers_of(m).get("absync-truncated") == b"true")
    headers = headers_of(big_copy)
    assert headers["absync-original-size"] == b"999892"
    assert headers["absync-original-sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert big.startswith(big_copy.value() or b"x")
    assert {headers_of(m)["absync-error-kind"] for m in letters} == {b"decode"}
    assert {headers_of(m)["absync-source-topic"].decode() for m in letters} == {
        topics.deliveries,
        topics.commands,
    }
