"""The worker's destinations table on the real broker: a destination it has not read yet is waited
for, boundedly, and never taken for a deleted one; a deletion it read is answered at once."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from streams.destinations import DestinationTable, delete_destination
from streams.settings import Settings
from tests.streams_helpers import add_destination

pytestmark = pytest.mark.kafka


async def test_a_destination_not_read_yet_is_waited_for_and_a_deleted_one_is_not(settings: Settings) -> None:
    table = DestinationTable(settings).start()
    try:
        await asyncio.to_thread(table.wait_ready, 60)
        # Published while a record naming it is already being handled (the fan-out's table, or
        # the operator's publish, ahead of this one): the handler's wait finds it.
        later = threading.Timer(0.5, add_destination, (settings, "dst-new"))
        later.start()
        found = await table.wait_for("dst-new", 30)
        later.join()
        assert found is not None and found.id == "dst-new"

        delete_destination(settings, "dst-new")
        deadline = time.monotonic() + 30
        while not table.deleted("dst-new"):
            assert time.monotonic() < deadline, "the deletion never reached the table"
            await asyncio.sleep(0.05)
        started = time.monotonic()
        assert await table.wait_for("dst-new", 30) is None
        assert time.monotonic() - started < 5, "a deletion the table read is not waited for"
        assert await table.wait_for("dst-never", 0.2) is None  # never published: None after the bound
    finally:
        table.close()
