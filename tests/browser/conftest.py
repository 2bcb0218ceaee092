"""The console in real headless Chromium (Debian's ``chromium``, driven by Playwright for Python).

Everything behind the page runs for real: uvicorn serving ``create_app`` on a free loopback port
with a SQLite database, the real broker, the projection runner filling the view from the status
topic, the delivery worker sending to a loopback webhook receiver (tests/fakes/receiver.py) through
the ``http`` connector, and applying the Retry and Mark as processed commands the console issues.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, ViewportSize, sync_playwright
from sqlalchemy.engine import Engine

from absync.web.app import create_app
from absync.web.auth import Right, create_token
from absync.web.server import HttpComponent
from projections.db import engine_for
from projections.runner import ProjectionRunner
from schemas.delivery import Delivery, delivery_id_for
from schemas.destination import Destination
from schemas.models import ChangeKind
from streams.destinations import publish_destination
from streams.secrets import SecretBox
from streams.settings import Settings
from tests.connectors.deliveries import TENANT, make_delivery
from tests.delivery.harness import SIGNING_SECRET, Feed, RunningWorker
from tests.fakes.receiver import Receiver
from tests.web.conftest import free_port, wait_for_leaders

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1366, "height": 768}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WAIT_MS = 60_000
"""Upper bound of every wait in the page (the pipeline usually answers in a second or two)."""


@dataclass
class Console:
    """A running service, one token per right, and helpers to feed it absence changes."""

    settings: Settings
    engine: Engine
    base_url: str
    tokens: dict[str, str]
    receiver: Receiver
    feed: Feed

    def url(self, path: str) -> str:
        return self.base_url + path

    def destination(self, dest_id: str, name: str, path: str) -> Destination:
        """Publishes a signed webhook destination that posts to the receiver under ``path``."""
        box = SecretBox.from_settings(self.settings)
        destination = Destination(
            id=dest_id,
            tenant=TENANT,
            name=name,
            kind="http",
            settings={"url": self.receiver.url + path},
            secrets={"signing_secrets": box.encrypt(SIGNING_SECRET)},
            revision=1,
            updated_by="setup",
        )
        publish_destination(self.settings, destination)
        return destination

    def send(self, delivery: Delivery) -> Delivery:
        self.feed.deliveries(delivery)
        return delivery

    def api(self, who: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.tokens[who]}"}, timeout=30
        )

    def wait_api(self, who: str, path: str, predicate: Callable[[httpx.Response], bool]) -> httpx.Response:
        """Polls an API route until ``predicate`` holds (bounded: 120 s, a busy CI machine included):
        the view follows Kafka."""
        deadline = time.monotonic() + 120
        with self.api(who) as client:
            while True:
                response = client.get(path)
                if predicate(response):
                    return response
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        pytest.fail(f"{path} never reached the expected state: {response.status_code} {response.text[:300]}")


def absence_change(
    destination_id: str,
    absence_id: str,
    employee: tuple[str, str],
    start: dt.date,
    days: int = 1,
    change: ChangeKind = ChangeKind.APPROVED,
    version: int = 1,
) -> Delivery:
    """A delivery of one employee's absence (name, email) to one destination."""
    base = make_delivery(
        absence_id=absence_id,
        start=start,
        end=start + dt.timedelta(days=days - 1),
        change=change,
        version=version,
        destination_id=destination_id,
    )
    name, email = employee
    event = dataclasses.replace(
        base.event,
        employee=dataclasses.replace(
            base.event.employee, id=f"emp-{name.split()[0].lower()}", display_name=name, email=email
        ),
    )
    return dataclasses.replace(base, event=event, delivery_id=delivery_id_for(destination_id, event.event_id))


class _Projection:
    """The projection runner in a thread until ``stop()``."""

    def __init__(self, settings: Settings) -> None:
        self._stop = threading.Event()
        self._runner = ProjectionRunner(settings, engine_for(settings))
        self._thread = threading.Thread(
            target=self._runner.run_blocking, args=(self._stop.is_set,), daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the projection did not stop"


def _serve(component: HttpComponent, base_url: str) -> Callable[[], None]:
    """Starts uvicorn in a thread; returns the function that stops it."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(component.run(stop),), daemon=True)
    thread.start()
    with httpx.Client(base_url=base_url) as probe:
        for _ in range(600):  # bounded: the app is up once its destinations table caught up
            if not thread.is_alive():
                pytest.fail("the service failed to start")
            try:
                if probe.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("the service did not start")

    def shutdown() -> None:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()

    return shutdown


@pytest.fixture
def console(settings: Settings) -> Iterator[Console]:
    with running_console(settings) as started:
        yield started


@contextlib.contextmanager
def running_console(settings: Settings) -> Iterator[Console]:
    """The service of :class:`Console` on ``settings`` (topics created) until the block ends: for a
    fixture of a wider scope than a test's (one console shared by a module's tests)."""
    wait_for_leaders(settings)
    settings = settings.model_copy(update={"http_port": free_port()})
    engine = engine_for(settings)
    app = create_app(settings, engine=engine)
    tokens = {
        "view": create_token(engine, "Nina (support)", Right.VIEW),
        "configure": create_token(engine, "Omar (admin)", Right.CONFIGURE),
    }
    base_url = f"http://127.0.0.1:{settings.http_port}"
    projection = _Projection(settings)
    with Receiver(secrets=[SIGNING_SECRET]) as receiver, RunningWorker(settings):
        projection.start()
        shutdown = _serve(HttpComponent(settings, app), base_url)
        try:
            yield Console(settings, engine, base_url, tokens, receiver, Feed(settings))
        finally:
            shutdown()
            projection.stop()
            engine.dispose()


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT, locale="en-GB", timezone_id="Europe/Paris")
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    yield opened
    context.close()


def sign_in(page: Page, console: Console, who: str) -> None:
    """Signs in through the form, as an operator does."""
    page.goto(console.url("/console/sign-in"))
    page.get_by_label("API token").fill(console.tokens[who])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console/deliveries")
