"""Slots shared by destinations (streams/slots.py): stuck destinations always leave slots to live ones."""

from __future__ import annotations

import asyncio

import pytest

from streams.slots import GroupSlots


async def hold(slots: GroupSlots, group: str, count: int) -> list[asyncio.Task[None]]:
    """``count`` tasks of ``group`` asking for a slot; returns them once the loop has served them."""
    tasks = [asyncio.create_task(slots.acquire(group)) for _ in range(count)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return tasks


async def cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Ends the test's waiters still waiting."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_one_stuck_group_takes_half_and_two_leave_a_quarter() -> None:
    slots = GroupSlots(64, share=2)
    stuck_a = await hold(slots, "google-a", 100)
    stuck_b = await hold(slots, "google-b", 100)

    assert slots.held("google-a") == 32 and slots.held("google-b") == 16
    live = await hold(slots, "http", 8)
    assert all(t.done() for t in live), "a live destination found no slot"
    assert slots.used == 56
    await cancel(stuck_a + stuck_b)


async def test_stuck_groups_arriving_together_still_leave_slots() -> None:
    slots = GroupSlots(8, share=2)
    tasks = []
    for _ in range(20):  # interleaved arrivals of three hanging destinations
        for group in ("a", "b", "c"):
            tasks.append(asyncio.create_task(slots.acquire(group)))
    await asyncio.sleep(0)
    assert slots.used < 8
    live = asyncio.create_task(slots.acquire("graph"))
    await asyncio.sleep(0)
    assert live.done()
    await cancel(tasks)


async def test_a_released_slot_goes_to_a_waiting_group_in_turn() -> None:
    slots = GroupSlots(2, share=1)
    await slots.acquire("a")
    await slots.acquire("a")
    waiting_b = asyncio.create_task(slots.acquire("b"))
    waiting_a = asyncio.create_task(slots.acquire("a"))
    await asyncio.sleep(0)
    assert not waiting_b.done() and not waiting_a.done()

    slots.release("a")
    await asyncio.sleep(0)
    assert waiting_b.done() and not waiting_a.done()
    slots.release("a")
    await asyncio.sleep(0)
    assert waiting_a.done()
    assert (slots.held("a"), slots.held("b"), slots.used) == (1, 1, 2)


async def test_a_cancelled_waiter_takes_nothing() -> None:
    slots = GroupSlots(1)
    await slots.acquire("a")
    waiter = asyncio.create_task(slots.acquire("b"))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    slots.release("a")
    assert slots.used == 0
    await asyncio.wait_for(slots.acquire("c"), 5)


async def test_an_urgent_waiter_goes_before_the_group_s_earlier_waiters() -> None:
    """A live change to a destination being resynced: its replayed attempts hold the destination's
    slots and more wait; the live one gets the first slot that frees."""
    slots = GroupSlots(4, share=2)
    replayed = await hold(slots, "hooks", 6)
    assert slots.held("hooks") == 2
    live = asyncio.create_task(slots.acquire("hooks", urgent=True))
    await asyncio.sleep(0)
    assert not live.done(), "urgency never lifts the destination's limit"

    slots.release("hooks")
    await asyncio.sleep(0)
    assert live.done()
    assert [t.done() for t in replayed] == [True, True, False, False, False, False]
    slots.release("hooks")
    await asyncio.sleep(0)
    assert [t.done() for t in replayed] == [True, True, True, False, False, False]
    await cancel(replayed)


async def test_urgent_waiters_of_any_group_are_served_before_the_rest() -> None:
    slots = GroupSlots(2, share=1)
    await slots.acquire("a")
    await slots.acquire("a")
    replayed_b = asyncio.create_task(slots.acquire("b"))
    await asyncio.sleep(0)
    live_c = asyncio.create_task(slots.acquire("c", urgent=True))
    live_c2 = asyncio.create_task(slots.acquire("c", urgent=True))
    await asyncio.sleep(0)

    slots.release("a")
    await asyncio.sleep(0)
    assert live_c.done() and not live_c2.done() and not replayed_b.done()
    slots.release("a")
    await asyncio.sleep(0)
    assert live_c2.done() and not replayed_b.done(), "urgent ones first, in arrival order"
    slots.release("c")
    await asyncio.sleep(0)
    assert replayed_b.done()


async def test_a_cancelled_urgent_waiter_takes_nothing() -> None:
    slots = GroupSlots(1)
    await slots.acquire("a")
    waiter = asyncio.create_task(slots.acquire("b", urgent=True))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    slots.release("a")
    assert slots.used == 0
    await asyncio.wait_for(slots.acquire("c"), 5)
