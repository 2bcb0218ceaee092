"""The stall watchdog of the exactly-once runtime (:mod:`streams.processor`): ends the process when a
processor's loop stops making progress, so its supervisor restarts it (a blocked librdkafka call
cannot be interrupted from Python)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


class StallWatchdog:
    """Calls ``on_stall`` (default: log and end the process) when ``beat()`` was not called for
    ``limit`` seconds while running. One thread; ``stop()`` before the loop exits normally."""

    def __init__(self, name: str, limit: float, on_stall: Callable[[], None] | None = None) -> None:
        self._name = name
        self._limit = limit
        self._on_stall = on_stall or self._exit
        self._last = time.monotonic()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"{name}-watchdog", daemon=True)

    def start(self) -> StallWatchdog:
        self.beat()
        self._thread.start()
        return self

    def beat(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        while not self._stopped.wait(min(5.0, self._limit / 4)):
            idle = time.monotonic() - self._last
            if idle > self._limit:
                log.critical(
                    "processor stalled: ending the process", processor=self._name, seconds=round(idle)
                )
                self._on_stall()
                return

    @staticmethod
    def _exit() -> None:
        os._exit(70)  # EX_SOFTWARE: the supervisor restarts the worker
