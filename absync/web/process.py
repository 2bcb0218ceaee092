"""The ``http`` component in a process of its own, for ``absync run`` with other components.

Why: the API, the console's live streams and the pipeline (fan-out, delivery worker, projection)
would otherwise share one interpreter and its GIL; a burst of requests, or many open consoles, then
slows the deliveries down. In a process of its own the web server competes for CPU only as one more
process. ``absync run --only http`` (Kubernetes: the API Deployment) serves in-process as before.

Guarantees
    The child is started with ``spawn`` (no state of the parent is copied) and runs
    :func:`absync.web.server.build` with the parent's :class:`Settings`.
    Stopping: SIGTERM or SIGINT to the service sets ``stop``; the child gets SIGTERM, ends its
    streams and stops uvicorn (``GRACEFUL_SHUTDOWN_SECONDS``), and is killed if it has not exited
    within ``STOP_SECONDS``. A Ctrl-C reaches both (same process group): each stops cleanly.
    Failure: if the child exits on its own (a crash, a port already in use, killed), this component
    raises, so the service stops its other components and exits non-zero: a supervisor (systemd,
    Docker, ``make run``'s user) restarts the whole service. It is not restarted in place, so a web
    server that cannot start is never retried in a silent loop.
    Orphans: the child watches its parent and stops if the parent dies (even by SIGKILL).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from multiprocessing.process import BaseProcess

import structlog

from streams.logging import configure_logging
from streams.settings import Settings

log = structlog.get_logger(__name__)

STOP_SECONDS = 15.0
"""How long the child may take to stop after SIGTERM before it is killed."""


class WebServerExited(RuntimeError):
    """The web server's process ended while the service was running."""


class WebProcess:
    name = "http"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process: BaseProcess | None = None

    async def run(self, stop: asyncio.Event) -> None:
        context = multiprocessing.get_context("spawn")
        process = context.Process(target=serve, args=(self.settings,), name="absync-http")
        process.start()
        self.process = process
        log.info("web server process started", pid=process.pid)
        exited = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(process.sentinel, exited.set)
        try:
            stopping = asyncio.create_task(stop.wait())
            ending = asyncio.create_task(exited.wait())
            await asyncio.wait({stopping, ending}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            ending.cancel()
            if not exited.is_set():
                process.terminate()
                try:
                    await asyncio.wait_for(exited.wait(), STOP_SECONDS)
                except TimeoutError:
                    log.error("web server process did not stop: killed", pid=process.pid)
                    process.kill()
                    await exited.wait()
                process.join()
                log.info("web server process stopped", exitcode=process.exitcode)
                return
            process.join()
            raise WebServerExited(f"the web server process exited with code {process.exitcode}")
        finally:
            loop.remove_reader(process.sentinel)
            if process.is_alive():  # cancelled: never leave the child behind
                process.kill()
                process.join()


def serve(settings: Settings) -> None:
    """The child's entry point: the ``http`` component until SIGTERM/SIGINT or the parent's death."""
    configure_logging(settings.log_level)
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    from absync.web.server import build

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    parent = multiprocessing.parent_process()
    if parent is not None:
        loop.add_reader(parent.sentinel, stop.set)
    await build(settings).run(stop)


def build(settings: Settings) -> WebProcess:
    return WebProcess(settings)
