"""Shared fixtures: a real Kafka broker and per-test isolated settings.

The broker: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else testcontainers' Kafka when a Docker engine
answers; else the project's own local broker (deploy/local/broker.sh), started once per session.
Each test gets its own topic prefix and consumer groups, so tests share one broker safely.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.kafka import make_admin
from streams.logging import configure_logging
from streams.settings import Settings
from streams.topics import create_topics

configure_logging(os.environ.get("ABSYNC_LOG_LEVEL", "WARNING"))


@pytest.fixture(scope="session")
def bootstrap() -> str:
    from tests.kafka_fixture import ensure_broker

    return ensure_broker()


def make_settings(bootstrap: str, tmp_path: Path, **overrides: object) -> Settings:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    values: dict[str, object] = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "topic_prefix": prefix,
        "partitions": 3,
        "retry_delays": "1s,2s,3s,4s",
        "connector_timeout": 2.0,
        "data_dir": tmp_path / "data",
        "allowed_networks": "127.0.0.0/8,::1/128",  # the fakes and receivers listen on loopback
        # Fixed-date facts (tests/projections/helpers.py T0) must not age past the payload retention as
        # the calendar moves on: the retention tests set their own.
        "payload_retention": "3650d",
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings isolated to this test (own topic prefix), with the topics created."""
    s = make_settings(bootstrap, tmp_path)
    create_topics(s)
    yield s
    delete_topics(s)


def delete_topics(settings: Settings) -> None:
    """Deletes the test's topics, so a long suite does not fill the broker's heap with partitions."""
    admin = make_admin(settings)
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topic_prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # already gone: deletion is best-effort cleanup
                future.result()


# Tests that share one expensive server started per session (the secured broker, the schema
# registry, Chromium) run on one pytest-xdist worker, so each server starts once.
_XDIST_GROUPS = ("secured", "registry", "browser")


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` with the groups taken from the tests' folders. xdist's own loadgroup
    reads ``xdist_group`` marks through a node-id suffix that pytest 9.2 no longer lets it write
    (pytest-dev/pytest-xdist#1386: the marks are silently ignored); these runs saw each worker start
    its own registry or secured broker on the same port."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class FolderGroups(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            for group in _XDIST_GROUPS:
                if nodeid.startswith(f"tests/{group}/"):
                    return group
            return nodeid

    return FolderGroups(config, log)
