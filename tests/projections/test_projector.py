"""The projection rules, on SQLite and PostgreSQL: status sequences, idempotence, destinations."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from projections import queries
from projections.db import alembic_config, consumer_offsets, deliveries, engine_from_url, metadata, migrate
from projections.projector import SourceRecord
from schemas.codec import codec_for
from schemas.delivery import Status
from schemas.destination import Destination, Filters
from tests.projections.helpers import (
    DESTINATIONS_TOPIC,
    STATUS_TOPIC,
    apply,
    at,
    fact,
    snapshot,
    status_records,
)


def test_migrations_create_exactly_the_declared_tables(engine: Engine) -> None:
    # The PostgreSQL-only trigram indexes of migration 0002 are not declarable portably in metadata.
    def declared(name: str | None, type_: str, *_: object) -> bool:
        return not (type_ == "index" and name is not None and name.endswith("_trgm"))

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": declared})
        assert compare_metadata(context, metadata) == []
        assert set(sa.inspect(conn).get_table_names()) >= {
            "deliveries",
            "attempts",
            "consumer_offsets",
            "destinations",
            "api_tokens",
            "destination_audit",
        }


def test_components_starting_together_migrate_one_after_the_other(database_url: str) -> None:
    engines = [engine_from_url(database_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))

    def start(engine: Engine) -> None:
        barrier.wait()
        migrate(engine)

    try:
        with ThreadPoolExecutor(len(engines)) as pool:
            list(pool.map(start, engines))  # re-raises a failed migration
        with engines[0].connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [
                ScriptDirectory.from_config(alembic_config()).get_current_head()
            ]
    finally:
        for engine in engines:
            engine.dispose()


def test_pending_error_successful_appends_attempts(engine: Engine) -> None:
    retry_at = at(300)
    apply(engine, status_records([fact(status=Status.PENDING, seq=0, when=0)]))
    pending = queries.get_delivery(engine, "dlv_1", tenant="acme")
    assert pending is not None
    assert (pending.delivery.status, pending.delivery.attempt_count, pending.attempts) == ("PENDING", 0, [])

    error = fact(
        status=Status.ERROR,
        seq=1,
        when=10,
        attempt=1,
        attempted=True,
        error="503 busy",
        next_retry_at=retry_at,
    )
    apply(engine, status_records([error], first_offset=1))
    failed = queries.get_delivery(engine, "dlv_1", tenant="acme")
    assert failed is not None
    assert failed.delivery.status == "ERROR"
    assert failed.delivery.last_error == "503 busy"
    assert failed.delivery.next_retry_at == retry_at
    assert [a.number for a in failed.attempts] == [1]

    success = fact(status=Status.SUCCESSFUL, seq=2, when=320, attempt=2, attempted=True)
    apply(engine, status_records([success], first_offset=2))
    done = queries.get_delivery(engine, "dlv_1", tenant="acme")
    assert done is not None
    d = done.delivery
    assert (d.status, d.attempt_count, d.last_error, d.next_retry_at, d.manual) == (
        "SUCCESSFUL",
        2,
        None,
        None,
        False,
    )
    assert (d.created_at, d.updated_at) == (at(0), at(320))
    assert (d.start_date, d.end_date) == (dt.date(2026, 12, 1), dt.date(2026, 12, 3))
    assert [(a.number, a.response_status, a.error) for a in done.attempts] == [
        (1, 503, "503 busy"),
        (2, 200, None),
    ]
    assert done.attempts[0].request_headers["Authorization"] == "***"
    assert done.attempts[0].calls == [{"call": "PUT", "status": "503"}]


def test_a_late_pending_never_moves_a_delivery_backwards(engine: Engine) -> None:
    facts = [
        fact(status=Status.SUCCESSFUL, seq=1, when=20, attempt=1, attempted=True),
        fact(status=Status.PENDING, seq=0, when=5),  # written late (e.g. by a zombie worker)
        fact(status=Status.ERROR, seq=9, when=10, attempt=1, error="timeout"),
    ]
    apply(engine, status_records(facts))
    detail = queries.get_delivery(engine, "dlv_1", tenant=None)
    assert detail is not None
    assert (detail.delivery.status, detail.delivery.last_error) == ("SUCCESSFUL", None)
    assert (detail.delivery.created_at, detail.delivery.updated_at) == (at(5), at(20))


def test_superseded_delivery(engine: Engine) -> None:
    apply(
        engine,
        status_records(
            [
                fact(
                    status=Status.ERROR,
                    seq=0,
                    when=0,
                    attempt=1,
                    attempted=True,
                    error="500",
                    next_retry_at=at(60),
                ),
                fact(status=Status.SUPERSEDED, seq=1, when=30, attempt=1),
            ]
        ),
    )
    detail = queries.get_delivery(engine, "dlv_1", tenant=None)
    assert detail is not None
    assert detail.delivery.status == "SUPERSEDED"
    assert detail.delivery.next_retry_at is None
    assert detail.delivery.last_error == "500"  # why it was waiting before a newer version replaced it
    assert len(detail.attempts) == 1


def test_mark_processed_wins_over_later_automatic_failures_but_not_an_operator_retry(engine: Engine) -> None:
    apply(
        engine,
        status_records(
            [
                fact(
                    status=Status.ERROR,
                    seq=0,
                    when=0,
                    attempt=1,
                    attempted=True,
                    error="503",
                    next_retry_at=at(300),
                ),
                fact(status=Status.SUCCESSFUL, seq=1, when=100, attempt=1, manual=True),
                # the retry scheduled before the mark runs and fails:
                fact(status=Status.ERROR, seq=2, when=300, attempt=2, attempted=True, error="503 again"),
            ]
        ),
    )
    marked = queries.get_delivery(engine, "dlv_1", tenant=None)
    assert marked is not None
    assert (marked.delivery.status, marked.delivery.manual, marked.delivery.attempt_count) == (
        "SUCCESSFUL",
        True,
        2,
    )
    assert [a.number for a in marked.attempts] == [1, 2]
    assert marked.delivery.updated_at == at(300)

    apply(
        engine,
        status_records(
            [fact(status=Status.PENDING, seq=3, when=400, attempt=2, trigger="retry")], first_offset=3
        ),
    )
    retried = queries.get_delivery(engine, "dlv_1", tenant=None)
    assert retried is not None
    assert (retried.delivery.status, retried.delivery.manual, retried.delivery.trigger) == (
        "PENDING",
        False,
        "retry",
    )


def test_the_same_batch_replayed_from_stored_offsets_applies_nothing_twice(engine: Engine) -> None:
    facts = [
        fact("dlv_1", Status.PENDING, seq=0, when=0),
        fact("dlv_1", Status.ERROR, seq=1, when=1, attempt=1, attempted=True, error="503"),
        fact("dlv_2", Status.SUCCESSFUL, seq=0, when=2, attempt=1, attempted=True),
    ]
    records = status_records(facts)
    first = apply(engine, records)
    before = snapshot(engine)
    again = apply(engine, records)
    assert (first.applied, first.already_applied) == (3, 0)
    assert (again.applied, again.already_applied) == (0, 3)
    assert snapshot(engine) == before

    # A batch overlapping the stored offsets applies only its new part.
    later = fact("dlv_1", Status.SUCCESSFUL, seq=2, when=3, attempt=2, attempted=True)
    overlap = apply(engine, [*records[1:], *status_records([later], first_offset=3)])
    assert (overlap.applied, overlap.already_applied) == (1, 2)
    after = snapshot(engine)
    assert len(after["attempts"]) == 3
    with engine.connect() as conn:
        assert conn.execute(sa.select(consumer_offsets.c.next_offset)).scalars().all() == [4]


def test_an_undecodable_record_is_skipped_and_its_offset_passed(engine: Engine) -> None:
    good = status_records([fact("dlv_1", seq=0, when=0), fact("dlv_2", seq=0, when=1)])
    garbage = SourceRecord(STATUS_TOPIC, 0, 1, b"dlv_x", b"\xc3\x01not avro at all")
    bad_date = status_records(
        [fact("dlv_3", seq=0, when=2, dates=("2026-13-45", "2026-12-03"))], first_offset=2
    )
    moved = SourceRecord(STATUS_TOPIC, 0, 3, good[1].key, good[1].value)
    result = apply(engine, [good[0], garbage, *bad_date, moved])
    assert (result.applied, result.undecodable) == (2, 2)
    assert result.next_offsets == {(STATUS_TOPIC, 0): 4}
    assert {d.delivery_id for d in queries.list_deliveries(engine, tenant=None).items} == {"dlv_1", "dlv_2"}


def test_destinations_are_mirrored_without_secret_values(engine: Engine) -> None:
    codec = codec_for("Destination")
    secret = b"gAAAAA-encrypted-token-value"
    first = Destination(
        id="dst_1",
        tenant="acme",
        name="HR webhook",
        kind="http",
        filters=Filters(departments=("d1",)),
        settings={"url": "https://hooks.example.com"},
        secrets={"signing_secret": secret},
        revision=1,
        updated_at=at(0),
        updated_by="alice",
    )
    renamed = Destination(
        id="dst_1",
        tenant="acme",
        name="HR webhook v2",
        kind="http",
        settings={"url": "https://hooks.example.com/v2"},
        secrets={"signing_secret": secret},
        revision=2,
        updated_at=at(10),
        updated_by="bob",
    )
    other = Destination(id="dst_2", tenant="globex", name="Slack", kind="slack", updated_at=at(0))
    records = [
        SourceRecord(DESTINATIONS_TOPIC, 0, i, d.id.encode(), codec.encode(d.to_avro()))
        for i, d in enumerate([first, other, renamed])
    ]
    apply(engine, records)
    view = queries.get_destination(engine, "dst_1", "acme")
    assert view is not None
    assert (view.name, view.revision, view.updated_by, view.secret_names) == (
        "HR webhook v2",
        2,
        "bob",
        ["signing_secret"],
    )
    assert view.settings == {"url": "https://hooks.example.com/v2"}
    assert queries.get_destination(engine, "dst_2", "acme") is None  # another tenant's
    assert [d.id for d in queries.list_destinations(engine, None)] == ["dst_1", "dst_2"]
    assert secret.decode() not in repr(snapshot(engine))

    apply(engine, [SourceRecord(DESTINATIONS_TOPIC, 0, 3, b"dst_1", None)])  # tombstone
    assert [d.id for d in queries.list_destinations(engine, None)] == ["dst_2"]


def test_a_fact_written_twice_by_a_restarted_worker_appends_its_attempt_once(engine: Engine) -> None:
    attempt = fact(status=Status.ERROR, seq=1, when=10, attempt=1, attempted=True, error="503")
    apply(engine, status_records([attempt, attempt]))  # twice in one batch
    apply(engine, status_records([attempt], first_offset=2))  # and once more later
    detail = queries.get_delivery(engine, "dlv_1", tenant=None)
    assert detail is not None
    assert [(a.status_id, a.number) for a in detail.attempts] == [("dlv_1:1", 1)]
    assert detail.delivery.attempt_count == 1


def test_status_counts_move_with_the_rows(engine: Engine) -> None:
    def counts() -> dict[str, int]:
        kept = queries.count_by_status(engine, tenant="acme", destination_id="dst_1")
        with engine.connect() as conn:
            query = sa.select(deliveries.c.status, sa.func.count()).group_by(deliveries.c.status)
            assert kept == {status: n for status, n in conn.execute(query)}
        return kept

    apply(engine, status_records([fact("dlv_1", seq=0, when=0), fact("dlv_2", seq=0, when=0)]))
    assert counts() == {"PENDING": 2}
    apply(engine, status_records([fact("dlv_1", Status.ERROR, seq=1, when=1, error="503")], first_offset=2))
    assert counts() == {"PENDING": 1, "ERROR": 1}
    late = fact("dlv_1", Status.PENDING, seq=0, when=0)  # a duplicate: changes nothing
    apply(engine, status_records([fact("dlv_1", Status.SUCCESSFUL, seq=2, when=2), late], first_offset=3))
    assert counts() == {"PENDING": 1, "SUCCESSFUL": 1}
