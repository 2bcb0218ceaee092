"""Long-running blocking loops on threads of their own, never on asyncio's default executor.

asyncio's default executor has ``min(32, CPUs + 4)`` threads (6 on a 2-core machine) and is shared by
everything that calls ``asyncio.to_thread``. A processor loop that runs for the life of the service
(a consumer's poll loop, the projection) would hold one of those threads for good: four such loops
left two threads to every blocking connector call of the process (issue 12, item 3).

:func:`run_in_thread` starts one dedicated thread per call and awaits its result; the thread ends
with the function. Guarantees: the default executor is never used; the function sees the caller's
context variables; its return value or exception is delivered to the awaiting coroutine.
Cancelling the awaiting coroutine does not stop the thread (a thread cannot be stopped): callers
tell their loop to stop by their own means (an event) and then await it again or let it run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def run_in_thread(fn: Callable[..., T], *args: object, name: str) -> T:
    """Runs ``fn(*args)`` in a new daemon thread called ``name``; returns (or raises) its outcome."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = context.run(fn, *args)
        except BaseException as exc:  # delivered to the awaiting coroutine
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future
