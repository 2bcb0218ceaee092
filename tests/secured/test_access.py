"""What the secured broker refuses, and how absync says so: the producer principal may write
``absences`` only; a wrong password, an unknown CA and a missing ACL end ``absync run`` at start-up
with a message naming the cause (exit code 78), within a bound, never a silent hang."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, Message

from streams.kafka import kafka_properties, make_producer, read_compacted
from streams.publisher import AbsencePublisher
from streams.settings import REPO_ROOT, Settings
from streams.topics import Topics
from tests.cli_helpers import cli_env
from tests.secured.conftest import Lane
from tests.streams_helpers import make_event

pytestmark = [pytest.mark.secured, pytest.mark.kafka, pytest.mark.timeout(180)]

START_UP_BOUND_S = 60.0
"""Longest wait for ``absync run`` to give up (a bound against a hang; it takes a few seconds)."""


def test_the_producer_principal_writes_absences_and_nothing_else(lane: Lane) -> None:
    producer_settings = lane.settings("producer")
    topics = Topics(producer_settings)
    refused: dict[str, KafkaError | None] = {}

    def report(error: KafkaError | None, msg: Message) -> None:
        refused[msg.topic() or ""] = error

    producer = make_producer(producer_settings)
    for topic in (topics.commands, topics.destinations):
        producer.produce(topic, key=b"acme|x", value=b"forged", on_delivery=report)
    assert producer.flush(60) == 0
    assert {t: e.code() if e else None for t, e in refused.items()} == {
        topics.commands: KafkaError.TOPIC_AUTHORIZATION_FAILED,
        topics.destinations: KafkaError.TOPIC_AUTHORIZATION_FAILED,
    }

    event = make_event("abs-allowed")
    with AbsencePublisher(producer_settings) as publisher:
        publisher.publish(event)
    keys: list[bytes] = []
    read_compacted(
        lane.settings("absync"), topics.absences, lambda m: keys.append(m.key() or b""), timeout=60
    )
    assert len(keys) == 1 and event.absence.id.encode() in keys[0]
    landed: list[str] = []  # nothing forged landed
    for topic in (topics.commands, topics.destinations):
        read_compacted(lane.settings("absync"), topic, lambda m: landed.append(m.topic() or ""), timeout=60)
    assert landed == []


def start_service(settings: Settings, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "absync", "run", "--only", "fanout", "--only", "delivery"],
        cwd=REPO_ROOT,
        env=cli_env(settings),
        capture_output=True,
        text=True,
        timeout=START_UP_BOUND_S,
        check=False,
    )
    seconds = time.monotonic() - started
    sys.stderr.write(f"absync run gave up after {seconds:.1f}s: {result.stderr.splitlines()[-1:]}\n")
    return result, seconds


def with_properties(settings: Settings, **changes: str) -> Settings:
    properties = {**kafka_properties(settings), **{k.replace("_", "."): v for k, v in changes.items()}}
    return settings.model_copy(update={"kafka_properties": tuple(properties.items())})


def test_a_wrong_password_ends_start_up_with_a_clear_error(lane: Lane, tmp_path: Path) -> None:
    settings = with_properties(lane.settings("absync"), sasl_password="not-the-password")
    result, _ = start_service(settings, tmp_path)
    assert result.returncode == 78, result.stderr
    assert "refused the credentials of user 'absync'" in result.stderr
    assert "KAFKA_SASL_PASSWORD" in result.stderr
    assert "not-the-password" not in result.stderr + result.stdout  # never logged


def test_an_unknown_ca_ends_start_up_with_a_clear_error(lane: Lane, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.crt"
    ca = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=not-the-ca"]
    files = ["-keyout", str(tmp_path / "other-ca.key"), "-out", str(other_ca)]
    subprocess.run([*ca, *files], check=True, capture_output=True, timeout=60)
    settings = with_properties(lane.settings("absync"), ssl_ca_location=str(other_ca))
    result, _ = start_service(settings, tmp_path)
    assert result.returncode == 78, result.stderr
    assert "TLS handshake with Kafka failed" in result.stderr
    assert "KAFKA_SSL_CA_LOCATION" in result.stderr


def test_a_missing_acl_ends_start_up_with_a_clear_error(lane: Lane, tmp_path: Path) -> None:
    result, _ = start_service(lane.settings("viewer"), tmp_path)  # viewer: delivery-status only
    assert result.returncode == 78, result.stderr
    assert "Kafka's ACLs refuse user 'viewer'" in result.stderr
    assert "TOPIC_AUTHORIZATION_FAILED" in result.stderr


def test_the_viewer_principal_reads_delivery_status_and_nothing_else(lane: Lane) -> None:
    viewer = lane.settings("viewer", group_prefix=f"{lane.prefix}viewer")  # its groups: Pviewer*
    topics = Topics(viewer)
    seen: list[bytes] = []
    read_compacted(viewer, topics.status, lambda m: seen.append(m.value() or b""), timeout=60)  # allowed
    assert seen == []
    for topic in (topics.absences, topics.deliveries):
        with pytest.raises(KafkaException, match="TOPIC_AUTHORIZATION_FAILED"):
            read_compacted(viewer, topic, lambda m: seen.append(m.value() or b""), timeout=60)
    refused: list[KafkaError | None] = []
    # Not idempotent: an idempotent producer of a principal that may write nothing at all is refused
    # its producer id first (CLUSTER_AUTHORIZATION_FAILED, fatal); this asks the topic's ACL itself.
    producer = make_producer(viewer, **{"enable.idempotence": False})
    producer.produce(topics.status, key=b"x", value=b"forged", on_delivery=lambda e, m: refused.append(e))
    producer.flush(60)
    assert [e.code() if e else None for e in refused] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
