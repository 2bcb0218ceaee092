"""The ``http`` component of ``absync run``: uvicorn serving the app on ``http_host:http_port``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import structlog
import uvicorn
from fastapi import FastAPI

from absync.web.app import create_app
from streams.settings import Settings

log = structlog.get_logger(__name__)

GRACEFUL_SHUTDOWN_SECONDS = 5


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the service runner owns SIGINT/SIGTERM and sets ``stop``."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpComponent:
    name = "http"

    def __init__(self, settings: Settings, app: FastAPI) -> None:
        self.settings = settings
        self.app = app
        self.server = _Server(
            uvicorn.Config(
                app,
                host=settings.http_host,
                port=settings.http_port,
                log_config=None,  # keep absync's structlog configuration
                access_log=False,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            )
        )

    @property
    def started(self) -> bool:
        return self.server.started

    async def _serve(self) -> None:
        try:
            await self.server.serve()
        except SystemExit as exc:  # uvicorn exits when the app's start-up fails
            raise RuntimeError(
                f"HTTP server did not start on {self.settings.http_host}:{self.settings.http_port}"
            ) from exc

    async def run(self, stop: asyncio.Event) -> None:
        serving = asyncio.create_task(self._serve(), name="uvicorn")
        stopping = asyncio.create_task(stop.wait())
        log.info("http server starting", host=self.settings.http_host, port=self.settings.http_port)
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        # Event streams end first (they would hold their connections open), then uvicorn stops.
        self.app.state.absync.stopping.set()
        self.server.should_exit = True
        stopping.cancel()
        await serving


def build(settings: Settings) -> HttpComponent:
    return HttpComponent(settings, create_app(settings))
