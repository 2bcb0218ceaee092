"""The secured lane: a broker of its own, started by ``ABSYNC_BROKER_SECURITY=sasl_ssl
deploy/local/broker.sh start`` on its own ports (SASL_SSL 29480, controller 29481, mutual TLS 29482;
below Linux's ephemeral port range, so no outgoing connection can hold one of them) for the session
and stopped at the end; never the shared test broker.

Each test gets its own topic prefix under the broker's ``lane.``, the ACLs of streams/acls.py for
that prefix (applied by the admin principal, as an operator would), and one :class:`Settings` per
principal, built from the env files the script printed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams import acls
from streams.kafka import make_admin
from streams.kafka_env import read_env_file
from streams.settings import REPO_ROOT, Settings
from streams.topics import Topics, create_topics

SCRIPT = REPO_ROOT / "deploy" / "local" / "broker.sh"
PORT = int(os.environ.get("ABSYNC_TEST_SECURED_BROKER_PORT", "29480"))
LANE_PREFIX = "lane."


def broker_sh(command: str) -> str:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")},
        "ABSYNC_BROKER_SECURITY": "sasl_ssl",
        "ABSYNC_BROKER_PORT": str(PORT),
        "ABSYNC_TOPIC_PREFIX": LANE_PREFIX,
    }
    result = subprocess.run(
        ["bash", str(SCRIPT), command],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"broker.sh {command} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


@dataclass(frozen=True)
class SecuredBroker:
    env_files: dict[str, Path]
    """principal -> its env file (absync, absync-mtls, producer, viewer, admin)."""

    def settings(self, principal: str, tmp_path: Path, prefix: str, **overrides: object) -> Settings:
        """Settings of ``principal`` (its KAFKA_* lines), on the topics of ``prefix``."""
        env = read_env_file(self.env_files[principal])
        bootstrap = env.pop("KAFKA_BOOTSTRAP_SERVERS")
        properties = {k[len("KAFKA_") :].lower().replace("_", "."): v for k, v in env.items()}
        values: dict[str, object] = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "kafka_properties": properties,
            "topic_prefix": prefix,
            "partitions": 3,
            "retry_delays": "1s,2s,3s,4s",
            "connector_timeout": 2.0,
            "data_dir": tmp_path / "data",
            **overrides,
        }
        return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def secured_broker() -> Iterator[SecuredBroker]:
    started = time.monotonic()
    out = broker_sh("start")
    sys.stderr.write(f"secured broker started in {time.monotonic() - started:.1f}s\n")
    paths = [Path(line) for line in out.splitlines() if line.endswith(".env")]
    try:
        yield SecuredBroker({path.name.removesuffix(".env"): path for path in paths})
    finally:
        broker_sh("stop")


@dataclass(frozen=True)
class Lane:
    """One test's view of the secured broker: a settings object per principal, same topics."""

    broker: SecuredBroker
    tmp_path: Path
    prefix: str

    def settings(self, principal: str, **overrides: object) -> Settings:
        return self.broker.settings(principal, self.tmp_path, self.prefix, **overrides)


@pytest.fixture
def lane(secured_broker: SecuredBroker, tmp_path: Path) -> Iterator[Lane]:
    """Own prefix ``lane.<id>.``, its ACLs granted, its topics created by the service principal."""
    lane = Lane(secured_broker, tmp_path, f"{LANE_PREFIX}{uuid.uuid4().hex[:8]}.")
    admin = lane.settings("admin")
    acls.apply(admin, {"absync": "User:absync", "producer": "User:producer", "viewer": "User:viewer"})
    create_topics(lane.settings("absync"))
    yield lane
    client = make_admin(admin)
    names = [spec.name for spec in Topics(admin).specs()]
    for future in client.delete_topics(names, operation_timeout=30).values():
        with contextlib.suppress(Exception):  # best-effort cleanup
            future.result()
