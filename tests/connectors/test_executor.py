"""A destination's own threads (connectors/executor.py): bounded, cancellable, never leaking.

Real threads blocked on real events; liveness assertions ("eventually, while X is still stuck"),
with generous timeouts, never timed ones.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from connectors.exceptions import BackpressureError, RetryableError
from connectors.executor import BlockingExecutor, ExecutorClosed, ExecutorSaturated

LIVENESS = 30.0
_who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def stuck_until(release: threading.Event, entered: threading.Event) -> str:
    entered.set()
    release.wait(LIVENESS * 2)
    return "came back"


async def abandon_one(executor: BlockingExecutor, release: threading.Event) -> None:
    """Starts a call that blocks until ``release`` and abandons it (its caller gives up)."""
    entered = threading.Event()
    call = asyncio.create_task(executor.run(stuck_until, release, entered))
    while not entered.is_set():
        await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def eventually(predicate: object) -> None:
    async with asyncio.timeout(LIVENESS):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_returns_results_raises_errors_and_sees_the_callers_context() -> None:
    executor = BlockingExecutor("dest", 2)
    _who.set("delivery 7")

    def boom() -> None:
        raise ValueError("from the library")

    assert await executor.run(lambda a, b: a + b, 2, 3) == 5
    assert await executor.run(_who.get) == "delivery 7"
    with pytest.raises(ValueError, match="from the library"):
        await executor.run(boom)
    assert threading.current_thread().name not in await executor.run(lambda: threading.current_thread().name)
    assert (await executor.run(lambda: threading.current_thread().name)).startswith("dest-")
    executor.close()


async def test_never_more_than_its_threads_at_once() -> None:
    executor = BlockingExecutor("dest", 3)
    running, peak = 0, 0
    lock = threading.Lock()
    gate = threading.Event()

    def call() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        gate.wait(LIVENESS)
        with lock:
            running -= 1

    calls = [asyncio.create_task(executor.run(call)) for _ in range(10)]
    await eventually(lambda: running == 3)
    gate.set()
    await asyncio.gather(*calls)
    assert peak == 3
    executor.close()


async def test_an_abandoned_call_frees_its_thread_for_the_next_while_still_stuck() -> None:
    executor = BlockingExecutor("dest", 1, max_stuck=2)
    release = threading.Event()
    await abandon_one(executor, release)

    assert executor.stuck == 1
    # The only thread is stuck, yet the next call runs (on a replacement) and completes.
    assert await asyncio.wait_for(executor.run(lambda: "served"), LIVENESS) == "served"
    assert executor.stuck == 1 and not release.is_set()

    release.set()  # the stuck call returns: its thread ends, its outcome is dropped
    await eventually(lambda: executor.stuck == 0)
    executor.close()


async def test_a_call_cancelled_while_queued_never_runs() -> None:
    executor = BlockingExecutor("dest", 1)
    release, entered = threading.Event(), threading.Event()
    busy = asyncio.create_task(executor.run(stuck_until, release, entered))
    await eventually(entered.is_set)
    ran = threading.Event()
    queued = asyncio.create_task(executor.run(ran.set))
    await asyncio.sleep(0.05)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    release.set()
    assert await busy == "came back"
    assert await executor.run(lambda: "next") == "next"
    assert not ran.is_set() and executor.stuck == 0
    executor.close()


async def test_too_many_stuck_calls_make_the_destination_saturated_not_more_threads() -> None:
    executor = BlockingExecutor("dest", 1, max_stuck=2)
    release = threading.Event()
    await abandon_one(executor, release)
    await abandon_one(executor, release)

    with pytest.raises(ExecutorSaturated) as caught:
        await executor.run(lambda: "never")
    assert isinstance(caught.value, BackpressureError) and caught.value.retry_after is None
    assert "2 calls are stuck" in caught.value.message
    assert executor.alive <= executor.threads + executor.max_stuck

    release.set()
    await eventually(lambda: executor.stuck == 0)
    assert await executor.run(lambda: "again") == "again"
    executor.close()


async def test_closing_fails_what_is_queued_and_lets_every_thread_end() -> None:
    executor = BlockingExecutor("dest", 1)
    release, entered = threading.Event(), threading.Event()
    busy = asyncio.create_task(executor.run(stuck_until, release, entered))
    await eventually(entered.is_set)
    queued = asyncio.create_task(executor.run(lambda: "never"))
    await asyncio.sleep(0.05)

    executor.close()
    with pytest.raises(ExecutorClosed) as caught:
        await queued
    assert isinstance(caught.value, RetryableError)
    release.set()
    assert await busy == "came back"  # a running call finishes
    await eventually(lambda: executor.alive == 0)
    with pytest.raises(ExecutorClosed):
        await executor.run(lambda: "after close")
