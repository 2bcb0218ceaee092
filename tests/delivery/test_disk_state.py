"""The delivery worker end to end with ``ABSYNC_STATE_BACKEND=disk``: its key state lives in SQLite
files under data_dir/state/, a retry goes through it, and a restarted worker restores it from the
changelog (a stale replay of an older version is superseded, a newer one delivered)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.delivery import Status
from schemas.models import ChangeKind
from streams.settings import Settings
from tests.delivery.harness import Feed, RunningWorker, StatusLog, change, http_destination, isolated
from tests.fakes.receiver import Receiver

pytestmark = pytest.mark.kafka


@pytest.fixture
def disk_settings(bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    with isolated(bootstrap, tmp_path, state_backend="disk") as settings:
        yield settings


def test_retries_and_a_restart_on_the_disk_backend(disk_settings: Settings, receiver: Receiver) -> None:
    settings = disk_settings
    statuses = StatusLog(settings)
    try:
        http_destination(settings, receiver.url + "/hook")
        first = change("abs-disk", 2, ChangeKind.APPROVED)
        receiver.fail_next(1, 500, absence_id="abs-disk")
        with RunningWorker(settings):
            Feed(settings).deliveries(first)
            assert statuses.wait_settled(first.delivery_id).status == Status.SUCCESSFUL
            assert any((settings.data_dir / "state").glob("*.sqlite"))
        older = change("abs-disk", 1, ChangeKind.APPROVED)
        newer = change("abs-disk", 3, ChangeKind.APPROVED)
        with RunningWorker(settings):
            Feed(settings).deliveries(older, newer)
            assert statuses.wait_settled(newer.delivery_id).status == Status.SUCCESSFUL
            stale = statuses.wait_settled(older.delivery_id)
        assert [e.attempt for e in statuses.of(first.delivery_id)] == [1, 2]
        assert stale.status == Status.SUPERSEDED
        assert receiver.state["abs-disk"]["version"] == 3
    finally:
        statuses.close()
