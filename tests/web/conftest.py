"""The operator API over real HTTP: uvicorn on a free loopback port (in a thread), a real database
(SQLite; also PostgreSQL when ``ABSYNC_TEST_DATABASE_URL`` is set) and the real broker.

The view is filled the real way: status facts are produced to the status topic and the projection
catches up (``projections.runner.catch_up``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaException, TopicPartition
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from absync.web.app import create_app
from absync.web.auth import Right, create_token
from absync.web.server import HttpComponent
from projections.db import engine_for, engine_from_url, migrate
from projections.runner import catch_up
from schemas.codec import codec_for
from schemas.delivery import Attempt, DeliveryStatus, Status
from streams.kafka import connection_config, make_producer
from streams.settings import Settings
from streams.topics import Topics

DATABASES = ["sqlite"] + (["postgresql"] if os.environ.get("ABSYNC_TEST_DATABASE_URL") else [])


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Engine]:
    """A fresh database per test: a SQLite file, or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        eng = engine_for(settings)
        yield eng
        eng.dispose()
        return
    url = sa.make_url(os.environ["ABSYNC_TEST_DATABASE_URL"])
    name = f"absync_test_{uuid.uuid4().hex[:12]}"
    admin = engine_from_url(url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    eng = engine_from_url(url.set(database=name).render_as_string(hide_password=False))
    yield eng
    eng.dispose()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Api:
    """A running server and one token per kind of caller."""

    settings: Settings
    engine: Engine
    base_url: str
    tokens: dict[str, str]
    component: HttpComponent

    def client(self, who: str | None = None, *, token: str | None = None) -> httpx.Client:
        """A client with the token of ``who`` (a key of ``tokens``), or ``token``, or none."""
        token = token or (self.tokens[who] if who else None)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)

    def seed(self, *facts: DeliveryStatus) -> None:
        """Produces status facts to Kafka and lets the projection apply them."""
        produce_statuses(self.settings, facts)
        catch_up(self.settings, self.engine)


def produce_statuses(settings: Settings, facts: tuple[DeliveryStatus, ...] | list[DeliveryStatus]) -> None:
    producer = make_producer(settings)
    codec = codec_for("DeliveryStatus")
    for fact in facts:
        producer.produce(
            Topics(settings).status, key=fact.delivery_id.encode(), value=codec.encode(fact.to_avro())
        )
    assert producer.flush(30) == 0


def wait_for_leaders(settings: Settings) -> None:
    """Topics just created may have no partition leader yet; the API's destinations table reads at
    once at start-up (streams.destinations gives up on NOT_LEADER_FOR_PARTITION)."""
    consumer = Consumer({**connection_config(settings), "group.id": "absync-test-leaders"})
    try:
        for _ in range(100):
            try:
                consumer.get_watermark_offsets(TopicPartition(Topics(settings).destinations, 0), timeout=5)
                return
            except KafkaException:
                time.sleep(0.1)
    finally:
        consumer.close()


METRICS_TOKEN = "metrics-scrape-token-for-tests-only"


@contextlib.contextmanager
def serve(settings: Settings, engine: Engine) -> Iterator[tuple[str, HttpComponent]]:
    """The real ``http`` component on a free loopback port (a thread); its base URL."""
    wait_for_leaders(settings)
    settings = settings.model_copy(update={"http_port": free_port()})
    component = HttpComponent(settings, create_app(settings, engine=engine))
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(component.run(stop),), daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{settings.http_port}"
    with httpx.Client(base_url=base_url) as probe:
        for _ in range(600):  # bounded: the app starts (destinations table caught up) within a minute
            if not thread.is_alive():
                pytest.fail("the API failed to start")
            try:
                if probe.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("the API did not start")
    try:
        yield base_url, component
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[Api]:
    settings = settings.model_copy(update={"metrics_token": SecretStr(METRICS_TOKEN)})
    migrate(engine)
    tokens = {
        "view": create_token(engine, "viewer", Right.VIEW),
        "configure": create_token(engine, "admin", Right.CONFIGURE),
        "acme-view": create_token(engine, "acme viewer", Right.VIEW, "acme"),
        "acme-configure": create_token(engine, "acme admin", Right.CONFIGURE, "acme"),
    }
    with serve(settings, engine) as (base_url, component):
        yield Api(component.settings, engine, base_url, tokens, component)


def fact(
    *,
    tenant: str = "acme",
    destination_id: str = "dst-1",
    absence_id: str | None = None,
    status: Status = Status.ERROR,
    employee_name: str = "Jane Doe",
    dates: tuple[str, str] = ("2026-03-03", "2026-03-04"),
    seq: int = 1,
    at: dt.datetime | None = None,
    attempt: Attempt | None = None,
    **extra: Any,
) -> DeliveryStatus:
    """One status fact of a delivery (its id follows from destination and absence)."""
    absence_id = absence_id or f"abs-{uuid.uuid4().hex[:8]}"
    delivery_id = f"dlv_{uuid.uuid5(uuid.NAMESPACE_URL, destination_id + absence_id).hex}"
    return DeliveryStatus(
        status_id=f"{delivery_id}:{seq}",
        delivery_id=delivery_id,
        destination_id=destination_id,
        tenant=tenant,
        absence_id=absence_id,
        version=1,
        change="approved",
        operation="UPSERT",
        employee_id=f"e-{employee_name.split()[0].lower()}",
        employee_name=employee_name,
        employee_email=f"{employee_name.split()[0].lower()}@{tenant}.com",
        start_date=dates[0],
        end_date=dates[1],
        status=status,
        trigger="automatic",
        attempt=attempt.number if attempt else 0,
        occurred_at=at or dt.datetime.now(dt.UTC),
        attempt_record=attempt,
        error="HTTP 500 from the calendar" if status == Status.ERROR else None,
        **extra,
    )


def then(previous: DeliveryStatus, status: Status, **extra: Any) -> DeliveryStatus:
    """The next fact of the same delivery."""
    seq = int(previous.status_id.rsplit(":", 1)[1]) + 1
    return replace(
        previous,
        status_id=f"{previous.delivery_id}:{seq}",
        status=status,
        **{"occurred_at": previous.occurred_at + dt.timedelta(seconds=1), **extra},
    )


def attempt(number: int = 1, status: int = 500, duration_ms: float = 120.0) -> Attempt:
    return Attempt(
        number=number,
        started_at=dt.datetime.now(dt.UTC),
        duration_ms=duration_ms,
        request_method="PUT",
        request_url="https://calendar.example/events/abs-1",
        request_headers={"Authorization": "***", "Content-Type": "application/json"},
        request_body='{"subject": "Jane Doe - leave"}',
        response_status=status,
        response_headers={"Content-Type": "application/json"},
        response_body='{"error": "backend down"}' if status >= 400 else "{}",
        error=f"HTTP {status}" if status >= 400 else None,
        calls=[],
    )
