"""No record stops the projection (issue 12, item 1), on the real broker, on SQLite and PostgreSQL.

A status fact with a U+0000 in its display name and in its attempt (PostgreSQL's text and JSON
cannot hold it) used to end the projection at every restart. Now the NUL is stored as U+FFFD; an
undecodable record and a record the database refuses go to ``projection.invalid``; the good facts
around them are all in the view.
"""

from __future__ import annotations

import dataclasses

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from projections.db import attempts, deliveries, destinations
from projections.runner import catch_up
from schemas.codec import codec_for
from schemas.delivery import Status
from schemas.destination import Destination
from streams.kafka import make_producer
from streams.settings import Settings
from streams.topics import Topics
from tests.projections.helpers import at, encode, fact
from tests.streams_helpers import at_least, headers_of, read_committed

pytestmark = pytest.mark.kafka


def test_nul_characters_and_unstorable_records_never_stop_the_projection(
    settings: Settings, database_url: str, engine: Engine
) -> None:
    topics = Topics(settings)
    nul = fact("dlv_nul", Status.ERROR, seq=1, when=2, attempt=1, attempted=True, error="bad\x00gateway")
    assert nul.attempt_record is not None
    nul = dataclasses.replace(
        nul,
        employee_name="Jane\x00Doe",
        attempt_record=dataclasses.replace(
            nul.attempt_record,
            response_body='{"echo": "\x00"}',
            response_headers={"X-Nul\x00": "v\x00"},
        ),
    )
    refused = fact("dlv_refused", seq=0, when=3, employee=("refuse-me", "r@acme.test"))
    records: list[tuple[str, bytes, bytes]] = [
        ("dlv_good_1", encode(fact("dlv_good_1", seq=0, when=1)), b"good"),
        ("dlv_nul", encode(nul), b"nul"),
        ("dlv_bad", b"\xc3\x01garbage", b"garbage"),
        ("dlv_refused", encode(refused), b"refused"),
        ("dlv_good_2", encode(fact("dlv_good_2", seq=0, when=4)), b"good"),
    ]
    producer = make_producer(settings)
    for key, value, _ in records:
        producer.produce(topics.status, key=key.encode(), value=value, partition=0)
    named = Destination(id="dst_nul", tenant="acme", name="Web\x00hook", kind="http", updated_at=at(0))
    producer.produce(
        topics.destinations, key=b"dst_nul", value=codec_for("Destination").encode(named.to_avro())
    )
    assert producer.flush(30) == 0
    # A database that refuses one record's row: what any constraint or type limit does to a batch.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "ALTER TABLE deliveries ADD CONSTRAINT no_refuse CHECK (employee_name <> 'refuse-me')"
                if engine.dialect.name == "postgresql"
                else "CREATE TRIGGER no_refuse BEFORE INSERT ON deliveries "
                "WHEN NEW.employee_name = 'refuse-me' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        )

    live = settings.model_copy(update={"database_url": database_url})
    catch_up(live, engine)
    catch_up(live, engine)  # a restart: nothing left to stop on, nothing applied twice

    with engine.connect() as conn:
        rows = {r["delivery_id"]: r for r in conn.execute(sa.select(deliveries)).mappings()}
        attempt = conn.execute(sa.select(attempts)).mappings().one()
        destination = conn.execute(sa.select(destinations)).mappings().one()
    assert sorted(rows) == ["dlv_good_1", "dlv_good_2", "dlv_nul"]
    assert rows["dlv_nul"]["employee_name"] == "Jane\ufffdDoe"
    assert rows["dlv_nul"]["last_error"] == "bad\ufffdgateway"
    assert attempt["response_body"] == '{"echo": "\ufffd"}'
    assert attempt["response_headers"] == {"X-Nul\ufffd": "v\ufffd"}
    assert destination["name"] == "Web\ufffdhook"

    letters = read_committed(settings, topics.projection_invalid, at_least(2))
    assert len(letters) == 2
    by_key = {m.key(): headers_of(m) for m in letters}
    assert sorted(by_key) == [b"dlv_bad", b"dlv_refused"]
    assert by_key[b"dlv_bad"]["absync-reason"].startswith(b"undecodable")
    assert by_key[b"dlv_refused"]["absync-reason"].startswith(b"refused by the database")
    for key, headers in by_key.items():
        assert headers["absync-source-topic"] == topics.status.encode(), key
        assert headers["absync-error-kind"] == b"unstorable", key
    values = {m.key(): m.value() for m in letters}
    assert values[b"dlv_bad"] == b"\xc3\x01garbage"
    assert values[b"dlv_refused"] == encode(refused)
