"""The ``http`` component stops cleanly when ``stop`` is set, even with a live event stream open."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from sqlalchemy.engine import Engine

from absync.web.app import create_app
from absync.web.auth import Right, create_token
from absync.web.server import HttpComponent, build
from streams.settings import Settings
from tests.web.conftest import free_port, wait_for_leaders


def test_stop_ends_open_streams_and_the_server(settings: Settings, engine: Engine) -> None:
    wait_for_leaders(settings)
    settings = settings.model_copy(update={"http_port": free_port()})
    component = HttpComponent(settings, create_app(settings, engine=engine))  # migrates the database
    token = create_token(engine, "ops", Right.VIEW)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(component.run(stop),), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.http_port}/api/v1/deliveries/stream"
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=60) as client:
        for _ in range(600):  # bounded wait for start-up
            try:
                with client.stream("GET", url, headers=headers) as stream:
                    lines = stream.iter_lines()
                    assert next(lines) == ": connected"
                    loop.call_soon_threadsafe(stop.set)
                    rest = list(lines)  # ends only when the server closes the stream
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        else:
            pytest.fail("the server did not start")
    thread.join(30)
    assert not thread.is_alive(), "the http component did not return after stop"
    assert all(line == "" or line.startswith(":") for line in rest)
    loop.close()


def test_build_serves_on_the_configured_port(settings: Settings) -> None:
    component = build(settings.model_copy(update={"http_port": 18080}))
    assert (component.name, component.server.config.port) == ("http", 18080)
