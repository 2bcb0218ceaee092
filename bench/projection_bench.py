"""Projection benchmark: status events per second into SQLite and PostgreSQL, and list-query latency
on a table of a million deliveries.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092 .venv/bin/python bench/projection_bench.py \\
        [--events 50000] [--rows 1000000] [--backend sqlite --backend postgresql]

Catch-up: N synthetic DeliveryStatus events (PENDING, ERROR + attempt, SUCCESSFUL + attempt per
delivery) are produced to a fresh status topic, then the runner catches up from offset zero.
Queries: the deliveries table is filled by bulk insert (no Kafka), then every list query of the web
API is timed (median of repeated runs). PostgreSQL: ``ABSYNC_BENCH_DATABASE_URL`` (a server URL
whose user may create databases), else deploy/local/postgres.sh (started if needed).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from projections import queries
from projections.db import deliveries, engine_from_url, migrate
from projections.runner import catch_up
from schemas.codec import codec_for
from schemas.delivery import Attempt, DeliveryStatus, Status
from streams.kafka import make_admin, make_producer
from streams.logging import configure_logging
from streams.settings import Settings
from streams.topics import Topics, create_topics

REPO = Path(__file__).resolve().parent.parent
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DESTINATIONS = [f"dst_{i}" for i in range(20)]
STATUSES = ["SUCCESSFUL"] * 85 + ["ERROR"] * 8 + ["PENDING"] * 5 + ["SUPERSEDED"] * 2
FIRST_NAMES = ["Jane", "John", "Ann", "Paul", "Maria", "Omar", "Li", "Sofia", "Noah", "Emma"]
LAST_NAMES = ["Doe", "Roe", "Lee", "Martin", "Garcia", "Haddad", "Wang", "Rossi", "Smith", "Berg"]


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    """A fresh database URL of ``backend``, removed afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        return
    server_url = os.environ.get("ABSYNC_BENCH_DATABASE_URL")
    if not server_url:
        script = str(REPO / "deploy" / "local" / "postgres.sh")
        subprocess.run([script, "start"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server_url = subprocess.run(
            [script, "url"], check=True, capture_output=True, text=True
        ).stdout.strip()
    server = sa.make_url(server_url)
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def synthetic_fact(i: int, step: int) -> DeliveryStatus:
    """Step 0: PENDING; 1: ERROR after attempt 1; 2: SUCCESSFUL after attempt 2."""
    status = (Status.PENDING, Status.ERROR, Status.SUCCESSFUL)[step]
    when = T0 + dt.timedelta(seconds=i * 10 + step * 3)
    attempt = None
    if step:
        attempt = Attempt(
            number=step,
            started_at=when,
            duration_ms=40.0,
            request_method="PUT",
            request_url=f"https://hooks.example.com/absences/abs_{i}",
            request_headers={"Authorization": "***", "Content-Type": "application/json"},
            request_body='{"start": "2026-03-02", "end": "2026-03-06", "type": "vacation"}' * 4,
            response_status=503 if step == 1 else 200,
            response_body="{}",
            error="503 Service Unavailable" if step == 1 else None,
        )
    return DeliveryStatus(
        status_id=f"dlv_{i}:{step}",
        delivery_id=f"dlv_{i}",
        destination_id=DESTINATIONS[i % len(DESTINATIONS)],
        tenant="acme",
        absence_id=f"abs_{i}",
        version=1,
        change="approved",
        operation="UPSERT",
        employee_id=f"emp_{i % 5000}",
        employee_name=f"{FIRST_NAMES[i % 10]} {LAST_NAMES[(i // 10) % 10]}",
        employee_email=f"user{i % 5000}@acme.com",
        start_date="2026-03-02",
        end_date="2026-03-06",
        status=status,
        trigger="automatic",
        attempt=step,
        occurred_at=when,
        error=attempt.error if attempt else None,
        attempt_record=attempt,
    )


def bench_catch_up(backend: str, events: int, bootstrap: str, workdir: Path) -> None:
    settings = Settings(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,  # type: ignore[call-arg]
        topic_prefix=f"bench{uuid.uuid4().hex[:8]}.",
        data_dir=workdir,
    )
    create_topics(settings)
    topic, codec, producer = Topics(settings).status, codec_for("DeliveryStatus"), make_producer(settings)
    for n in range(events):
        fact = synthetic_fact(n // 3, n % 3)
        producer.produce(topic, key=fact.delivery_id.encode(), value=codec.encode(fact.to_avro()))
        if n % 10_000 == 0:
            producer.flush(60)
    producer.flush(60)
    with database(backend, workdir) as url:
        engine = engine_from_url(url)
        migrate(engine)
        applied, seconds = catch_up(settings.model_copy(update={"database_url": url}), engine)
        engine.dispose()
    make_admin(settings).delete_topics([spec.name for spec in Topics(settings).specs()])
    print(
        f"{backend:10s} catch-up: {applied} status events in {seconds:.1f}s = {applied / seconds:,.0f} events/s"
    )


def synthetic_rows(rows: int) -> Iterator[tuple[Any, ...]]:
    """Delivery rows as tuples in the column order of the table."""
    for i in range(rows):
        updated = T0 + dt.timedelta(seconds=i * 7)
        start = dt.date(2025, 1, 1) + dt.timedelta(days=i % 700)
        status = STATUSES[i % len(STATUSES)]
        row = {
            "delivery_id": f"dlv_{i:08d}",
            "destination_id": DESTINATIONS[i % len(DESTINATIONS)],
            "tenant": "acme" if i % 10 else "globex",
            "absence_id": f"abs_{i // 2}",
            "version": 1,
            "change": "approved",
            "operation": "UPSERT",
            "employee_id": f"emp_{i % 20000}",
            "employee_name": f"{FIRST_NAMES[i % 10]} {LAST_NAMES[(i // 10) % 10]} {i % 20000}",
            "employee_email": f"user{i % 20000}@acme.com",
            "start_date": start,
            "end_date": start + dt.timedelta(days=i % 5),
            "status": status,
            "manual": False,
            "trigger": "automatic",
            "attempt_count": 1,
            "next_retry_at": None,
            "last_error": "503 Service Unavailable" if status == "ERROR" else None,
            "status_at": updated,
            "created_at": updated,
            "updated_at": updated,
            "error_seen": "503 Service Unavailable" if status == "ERROR" else None,
            "error_seen_at": updated if status == "ERROR" else None,
            "success_at": updated if status == "SUCCESSFUL" else None,
            "change_seq": i + 1,
        }
        yield tuple(_value(row, column) for column in deliveries.c)


def _value(row: dict[str, Any], column: sa.Column[Any]) -> Any:
    """The row's value for ``column``; a nullable column the bench does not know yet is NULL, so a
    new column of the view does not break the bench (a NOT NULL one still does, loudly)."""
    if column.name in row or not column.nullable:
        return row[column.name]
    return None


def fill(engine: Engine, rows: int) -> float:
    """Bulk-inserts ``rows`` deliveries and their status counts through the driver (COPY on
    PostgreSQL; executemany with the columns' own bind conversions on SQLite); returns seconds."""
    started = time.monotonic()
    names = ", ".join(f'"{column.name}"' for column in deliveries.c)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "postgresql":
            with cursor.copy(f"COPY deliveries ({names}) FROM STDIN") as copy:
                for row in synthetic_rows(rows):
                    copy.write_row(row)
        else:
            convert = [column.type.bind_processor(engine.dialect) for column in deliveries.c]
            converted = (
                tuple(f(value) if f else value for f, value in zip(convert, row, strict=True))
                for row in synthetic_rows(rows)
            )
            insert = f"INSERT INTO deliveries ({names}) VALUES ({', '.join('?' for _ in deliveries.c)})"
            cursor.execute("BEGIN")
            while chunk := list(itertools.islice(converted, 50_000)):
                cursor.executemany(insert, chunk)
        cursor.execute(  # what the projector would have counted
            "INSERT INTO delivery_counts (tenant, destination_id, status, count) "
            "SELECT tenant, destination_id, status, count(*) FROM deliveries GROUP BY tenant, destination_id, status"
        )
        raw.commit()
        cursor.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()
    return time.monotonic() - started


def median_ms(run: Callable[[], object], repeat: int) -> float:
    run()  # warm caches
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def bench_queries(backend: str, rows: int, workdir: Path, repeat: int) -> None:
    with database(backend, workdir) as url:
        engine = engine_from_url(url)
        migrate(engine)
        print(f"{backend:10s} filled {rows:,} deliveries in {fill(engine, rows):.0f}s")
        deep = queries.list_deliveries(engine, tenant="acme", limit=50)
        for _ in range(20):  # the cursor of page 21
            deep = queries.list_deliveries(engine, tenant="acme", cursor=deep.next_cursor, limit=50)
        cases: dict[str, Callable[[], object]] = {
            "first page (tenant)": lambda: queries.list_deliveries(engine, tenant="acme"),
            "first page (all tenants)": lambda: queries.list_deliveries(engine, tenant=None),
            "page 21 by cursor": lambda: queries.list_deliveries(
                engine, tenant="acme", cursor=deep.next_cursor
            ),
            "status=ERROR": lambda: queries.list_deliveries(engine, tenant="acme", status="ERROR"),
            "destination": lambda: queries.list_deliveries(engine, tenant="acme", destination_id="dst_7"),
            "absence id": lambda: queries.list_deliveries(engine, tenant="acme", absence_id="abs_4242"),
            "employee substring (rare)": lambda: queries.list_deliveries(
                engine, tenant="acme", employee="user1234@"
            ),
            "date range (1 week)": lambda: queries.list_deliveries(
                engine, tenant="acme", date_from=dt.date(2025, 6, 1), date_to=dt.date(2025, 6, 7)
            ),
            "count_by_status": lambda: queries.count_by_status(engine, tenant="acme"),
            "destination_health": lambda: queries.destination_health(engine, "dst_7"),
            "get_delivery": lambda: queries.get_delivery(engine, "dlv_00500000", tenant=None),
        }
        for label, run in cases.items():
            print(f"{backend:10s} {label:28s} median {median_ms(run, repeat):8.1f} ms")
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgresql"])
    parser.add_argument("--skip-catch-up", action="store_true")
    parser.add_argument("--skip-queries", action="store_true")
    args = parser.parse_args()
    configure_logging("WARNING")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:39092")
    with tempfile.TemporaryDirectory(prefix="projection-bench-") as tmp:
        for backend in args.backend or ["sqlite", "postgresql"]:
            if not args.skip_catch_up:
                bench_catch_up(backend, args.events, bootstrap, Path(tmp))
            if not args.skip_queries:
                bench_queries(backend, args.rows, Path(tmp), args.repeat)


if __name__ == "__main__":
    main()
