"""A bounded set of threads for one destination's blocking client library.

google-api-python-client, exchangelib and msal block; their calls used to run on asyncio's default
executor, shared by the whole process, so one hanging destination took threads every other one
needed (issue 12, item 3). Each connector now owns a :class:`BlockingExecutor`:

- **Bounded.** At most ``threads`` calls of this destination run at once; more wait in its queue
  (the delivery worker's per-destination slots bound that queue). Threads start on demand and end
  after ``IDLE_SECONDS`` without work, so an idle destination holds none.
- **Cancellable.** When the awaiting coroutine is cancelled (the attempt deadline, a shutdown), a
  call still queued is dropped, and a call already running is *abandoned*: a thread cannot be
  killed, so it is left to finish on its own, its outcome discarded, and it counts as *stuck*. It no
  longer counts against ``threads``: a replacement thread serves the queue at once, so the lane is
  free and no other call waits for the stuck one.
- **No unbounded leak.** At most ``max_stuck`` abandoned threads per executor. Past that the
  destination is *saturated*: :meth:`BlockingExecutor.run` refuses at once with
  :class:`ExecutorSaturated` (a retryable error: the delivery goes to the retry ladder) until a stuck
  call returns. So one destination never has more than ``threads + max_stuck`` threads.
- **Context.** The function runs in a copy of the caller's context (like ``asyncio.to_thread``), so
  context variables such as a delivery's call recorder reach the library's HTTP hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from connectors.exceptions import BackpressureError, RetryableError

T = TypeVar("T")

IDLE_SECONDS = 60.0
"""A thread with no work this long ends (it is started again when work comes)."""


class ExecutorSaturated(BackpressureError):
    """Too many calls of this destination are stuck in its client library: nothing more is started."""


class ExecutorClosed(RetryableError):
    """The destination's connector was closed (rebuilt or shut down) before the call ran."""


class _State(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    DROPPED = "dropped"


@dataclass(eq=False)
class _Job(Generic[T]):
    fn: Callable[..., T]
    args: tuple[Any, ...]
    context: contextvars.Context
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]
    state: _State = _State.QUEUED
    abandoned: bool = False
    thread: str = field(default="")


class BlockingExecutor:
    """``threads`` threads for one destination, at most ``max_stuck`` more abandoned (see module)."""

    def __init__(self, name: str, threads: int, max_stuck: int | None = None) -> None:
        if threads < 1:
            raise ValueError("a BlockingExecutor needs at least one thread")
        self.name = name
        self.threads = threads
        self.max_stuck = threads if max_stuck is None else max_stuck
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._queue: deque[_Job[Any]] = deque()
        self._serving = 0
        """Threads alive and not stuck (running a live call or waiting for one)."""
        self._idle = 0
        self._stuck = 0
        self._started = 0
        self._closed = False

    # -- observation ------------------------------------------------------------------------------
    @property
    def stuck(self) -> int:
        """Threads abandoned while still inside a call."""
        with self._lock:
            return self._stuck

    @property
    def alive(self) -> int:
        """Every thread of this executor that has not ended (serving and stuck)."""
        with self._lock:
            return self._serving + self._stuck

    # -- use ---------------------------------------------------------------------------------------
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on one of this destination's threads; its result, or its exception.

        Raises :class:`ExecutorSaturated` without starting anything when ``max_stuck`` calls are
        stuck, :class:`ExecutorClosed` after :meth:`close`. Cancelling the caller drops or abandons
        the call (see the module docstring).
        """
        loop = asyncio.get_running_loop()
        job: _Job[T] = _Job(fn, args, contextvars.copy_context(), loop, loop.create_future())
        with self._lock:
            if self._closed:
                raise ExecutorClosed(f"{self.name}: the connector was closed; the call was not made")
            if self._stuck >= self.max_stuck:
                raise ExecutorSaturated(
                    f"{self.name}: {self._stuck} calls are stuck in the client library past the "
                    "attempt deadline; no new call is started until one returns"
                )
            self._queue.append(job)
            self._spawn_if_needed()
            self._work.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            self._give_up(job)
            raise

    def close(self) -> None:
        """Idle threads end; queued calls fail with :class:`ExecutorClosed`; running ones finish."""
        with self._lock:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            for job in dropped:
                job.state = _State.DROPPED
            self._work.notify_all()
        for job in dropped:
            self._settle(job, None, ExecutorClosed(f"{self.name}: the connector was closed"))

    # -- internals -----------------------------------------------------------------------------------
    def _give_up(self, job: _Job[Any]) -> None:
        with self._lock:
            if job.state is _State.QUEUED:
                job.state = _State.DROPPED
                self._queue.remove(job)
            elif job.state is _State.RUNNING and not job.abandoned:
                job.abandoned = True
                self._stuck += 1
                self._serving -= 1  # its thread no longer serves: a replacement may start
                self._spawn_if_needed()

    def _spawn_if_needed(self) -> None:
        """Under the lock: one more thread when queued work outnumbers idle threads."""
        if len(self._queue) > self._idle and self._serving < self.threads and not self._closed:
            self._serving += 1
            self._started += 1
            threading.Thread(target=self._serve, name=f"{self.name}-{self._started}", daemon=True).start()

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._idle += 1
                    woken = self._work.wait(IDLE_SECONDS)
                    self._idle -= 1
                    if not woken and not self._queue:
                        self._serving -= 1
                        return
                if not self._queue:  # closed
                    self._serving -= 1
                    return
                job = self._queue.popleft()
                job.state = _State.RUNNING
                job.thread = threading.current_thread().name
            result: Any = None
            error: BaseException | None = None
            try:
                result = job.context.run(job.fn, *job.args)
            except BaseException as exc:  # delivered to the caller
                error = exc
            with self._lock:
                job.state = _State.DONE
                abandoned = job.abandoned
                if abandoned:
                    self._stuck -= 1
            if abandoned:
                return  # a replacement has served in this thread's place since it was abandoned
            self._settle(job, result, error)

    @staticmethod
    def _settle(job: _Job[Any], result: Any, error: BaseException | None) -> None:
        def settle() -> None:
            if job.future.done():
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for this outcome
            job.loop.call_soon_threadsafe(settle)
