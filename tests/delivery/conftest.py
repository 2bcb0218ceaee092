"""Fixtures of the delivery tests: isolated settings whose topics are deleted afterwards, slower
retry delays, a loopback receiver, the status log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.settings import Settings
from tests.delivery.harness import StatusLog, isolated
from tests.fakes.receiver import Receiver


@pytest.fixture
def settings(bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    """As tests/conftest.py's (own topic prefix, delays 1s,2s,3s,4s), topics deleted at the end."""
    with isolated(bootstrap, tmp_path) as settings:
        yield settings


@pytest.fixture
def slow_settings(bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    """A first retry stage long enough for a newer change or a command to overtake the waiting one."""
    with isolated(bootstrap, tmp_path, retry_delays="4s,5s,6s,7s") as settings:
        yield settings


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def statuses(settings: Settings) -> Iterator[StatusLog]:
    log = StatusLog(settings)
    yield log
    log.close()


@pytest.fixture
def slow_statuses(slow_settings: Settings) -> Iterator[StatusLog]:
    log = StatusLog(slow_settings)
    yield log
    log.close()
