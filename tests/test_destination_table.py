"""The worker's destinations table on the real broker: a destination it has not read yet is read
before it answers, never taken for a deleted one; an unknown id is answered once the table has read
to the topic's end, not after a fixed wait; a deletion it read is answered at once."""

from __future__ import annotations

import asyncio

import pytest

from streams.destinations import DestinationTable, delete_destination
from streams.settings import Settings
from tests.streams_helpers import add_destination

pytestmark = pytest.mark.kafka

NEVER = 3600.0
"""A bound no answer here should need: a wait_for that met it would hang the test (the suite's own
timeout fails it), never pass it."""


async def _caught_up(settings: Settings) -> DestinationTable:
    table = DestinationTable(settings).start()
    await asyncio.to_thread(table.wait_ready, 60)
    return table


async def test_a_destination_published_before_the_record_that_names_it_is_found(settings: Settings) -> None:
    table = await _caught_up(settings)
    try:
        # Published (acknowledged by Kafka) before the record naming it is handled: the fan-out's
        # table, or an operator's publish, ahead of this one. The table reads to the end first.
        for n in range(5):
            await asyncio.to_thread(add_destination, settings, f"dst-new-{n}")
            found = await table.wait_for(f"dst-new-{n}", NEVER)
            assert found is not None and found.id == f"dst-new-{n}"
    finally:
        table.close()


async def test_unknown_and_deleted_ids_are_answered_without_the_bound(settings: Settings) -> None:
    table = await _caught_up(settings)
    try:
        # Many asks at once for ids never published: answered (None) once the table has read to
        # the end; with a bound of an hour, only the barrier can answer them.
        answers = await asyncio.gather(*(table.wait_for(f"dst-never-{n}", NEVER) for n in range(50)))
        assert answers == [None] * 50

        await asyncio.to_thread(add_destination, settings, "dst-gone")
        assert await table.wait_for("dst-gone", NEVER) is not None
        await asyncio.to_thread(delete_destination, settings, "dst-gone")
        # An ask for another unknown id reads the table to the end, deletion included; the deleted
        # id is then answered from what the table read (its tombstone), without a look-up.
        assert await table.wait_for("dst-never-again", NEVER) is None
        assert table.deleted("dst-gone")
        assert await table.wait_for("dst-gone", NEVER) is None
    finally:
        table.close()


async def test_a_table_that_cannot_answer_gives_none_after_its_bound(settings: Settings) -> None:
    # A table never started never serves its barrier: the caller's bound is what ends the wait.
    table = DestinationTable(settings)
    assert await table.wait_for("dst-any", 0.2) is None
