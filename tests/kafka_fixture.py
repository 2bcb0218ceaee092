"""Where the tests find a real Kafka broker (used by tests/conftest.py).

In order:
1. ``KAFKA_BOOTSTRAP_SERVERS`` if set (a broker someone runs already);
2. testcontainers' ``KafkaContainer`` (KRaft) when a Docker engine answers ``docker info``;
3. the project's local broker (deploy/local/broker.sh via :mod:`streams.broker`) on
   ``ABSYNC_TEST_BROKER_PORT`` (default 39092), started if needed and left running for the next
   run (``make test`` / ``make clean`` stop it).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
from typing import Any

DEFAULT_TEST_BROKER_PORT = 39092
DEFAULT_CONTAINER_IMAGE = "confluentinc/cp-kafka:7.6.0"

_bootstrap: str | None = None
_container: Any = None


def docker_available() -> bool:
    """True when a Docker engine answers (not merely when the client is installed)."""
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "info"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _start_container() -> str:
    global _container
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # older testcontainers
        from testcontainers.kafka import KafkaContainer

    image = os.environ.get("ABSYNC_TEST_KAFKA_IMAGE", DEFAULT_CONTAINER_IMAGE)
    container = KafkaContainer(image).with_kraft()
    container.start()
    _container = container
    atexit.register(_stop_container)
    return str(container.get_bootstrap_server())


def _stop_container() -> None:
    global _container
    if _container is not None:
        try:
            _container.stop()
        finally:
            _container = None


def _start_local() -> str:
    from streams import broker

    port = int(os.environ.get("ABSYNC_TEST_BROKER_PORT", str(DEFAULT_TEST_BROKER_PORT)))
    return broker.start(port)


def ensure_broker() -> str:
    """Returns bootstrap servers of a running broker, starting one if needed (once per process)."""
    global _bootstrap
    if _bootstrap is None:
        env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        if env:
            _bootstrap = env
        elif docker_available():
            _bootstrap = _start_container()
        else:
            _bootstrap = _start_local()
    return _bootstrap
