"""The whole pipeline on the secured broker, as a deployment runs it: ``absync run`` (fan-out,
delivery, projection, API) in a subprocess with the service principal's env file, an upstream team
publishing with its own principal, a receiver on loopback that fails the first request (a retry),
and the operator API read at the end. Once with SCRAM-SHA-512 over TLS, once with mutual TLS."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from absync.web.auth import Right, create_token
from projections.db import engine_for, migrate
from streams.kafka import kafka_properties
from streams.kafka_env import is_secret
from streams.publisher import AbsencePublisher
from streams.settings import REPO_ROOT, Settings
from tests.cli_helpers import cli_env
from tests.delivery.harness import SIGNING_SECRET, http_destination
from tests.fakes.receiver import Receiver
from tests.secured.conftest import Lane
from tests.streams_helpers import make_event
from tests.web.conftest import free_port

pytestmark = [pytest.mark.secured, pytest.mark.kafka, pytest.mark.timeout(300)]

SETTLE_S = 120.0
"""Longest wait for the pipeline to deliver and project (a bound, not an assertion)."""


@contextmanager
def service(settings: Settings, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``absync run`` (every component) with the settings' principal; SIGTERM at the end."""
    env = cli_env(
        settings, ABSYNC_HTTP_PORT=str(settings.http_port), ABSYNC_LOG_LEVEL="INFO", ABSYNC_WORKER_ID="lane"
    )
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "absync", "run"], cwd=REPO_ROOT, env=env, stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)


def eventually(predicate: Any, timeout: float, what: str, log_path: Path) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout:g} s\n{log_path.read_text()[-4000:]}")
        time.sleep(0.5)


@pytest.mark.parametrize("principal", ["absync", "absync-mtls"], ids=["scram-over-tls", "mutual-tls"])
def test_the_whole_pipeline_on_a_secured_cluster(lane: Lane, principal: str, tmp_path: Path) -> None:
    service_settings = lane.settings(principal, http_port=free_port())
    producer_settings = lane.settings("producer")
    engine = engine_for(service_settings)
    migrate(engine)
    token = create_token(engine, "lane", Right.VIEW)
    engine.dispose()
    log_path = tmp_path / "service.log"
    with Receiver(secrets=[SIGNING_SECRET]) as receiver, service(service_settings, log_path) as process:
        receiver.fail_next(1, 503)  # the first delivery fails: it comes back from a retry topic
        http_destination(service_settings, receiver.url + "/hook")
        events = [make_event(f"abs-{principal}-{i}") for i in range(3)]
        with AbsencePublisher(producer_settings) as publisher:  # the upstream team's own principal
            for event in events:
                publisher.publish(event)

        expected = {event.absence.id for event in events}
        eventually(lambda: set(receiver.state) >= expected, SETTLE_S, "delivered", log_path)
        assert process.poll() is None, log_path.read_text()[-4000:]
        statuses = [r.status for r in receiver.requests]
        assert 503 in statuses and statuses.count(503) == 1, statuses

        base = f"http://127.0.0.1:{service_settings.http_port}/api/v1"
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10) as api:

            def projected() -> list[dict[str, Any]] | None:
                try:
                    page = api.get("/deliveries", params={"limit": 50}).json()
                except httpx.HTTPError:
                    return None
                items = [i for i in page.get("items", []) if i.get("status") == "SUCCESSFUL"]
                return items if {i["absence_id"] for i in items} >= expected else None

            items = eventually(projected, SETTLE_S, "projected and served by the API", log_path)
            retried = [i for i in items if i["attempt_count"] == 2]
            assert len(retried) == 1, items
    secrets = [v for k, v in kafka_properties(service_settings).items() if is_secret(k)]
    secrets += [
        Path(kafka_properties(service_settings).get("ssl.key.location", "/dev/null")).read_text()[30:90]
    ]
    logged = log_path.read_text()
    assert all(secret not in logged for secret in secrets if secret)  # the password, the key: never logged
