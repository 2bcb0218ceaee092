"""The shared change feed behind ``/deliveries/stream`` (issue 19), over real HTTP, broker and database:
tenant scoping on one feed, coalesced batches whose final state is the view's, and a client that never
reads is dropped (resync or disconnect) while the others keep receiving.

Revocation mid-stream on the shared feed: tests/web/test_access.py (one token revoked among open
streams: its stream gets ``unauthorized`` and ends, the others go on)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest

from absync.web.live import feed_of, install_feed
from schemas.delivery import DeliveryStatus, Status
from tests.web.conftest import METRICS_TOKEN, Api, fact, then

WAIT = 120.0  # generous bound for "eventually" on a loaded machine


@dataclass
class Watcher:
    """Reads one stream in a thread: the latest item per delivery, the batches, the other events."""

    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    stats: dict[str, Any] | None = None
    batches: int = 0
    events: list[str] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, client: httpx.Client, path: str) -> None:
        try:
            with client.stream("GET", path) as stream:
                event = None
                for line in stream.iter_lines():
                    if line == ": connected":
                        self.connected.set()
                    elif line.startswith("event: "):
                        event = line.removeprefix("event: ")
                        self.events.append(event)
                    elif line.startswith("data: ") and event == "deliveries":
                        batch = json.loads(line.removeprefix("data: "))
                        with self.lock:
                            self.batches += 1
                            for item in batch["items"]:
                                self.latest[item["delivery_id"]] = item
                            self.stats = batch.get("stats", self.stats)
        except httpx.TransportError:  # the test closed the client
            pass
        finally:
            self.ended.set()

    def status_of(self, delivery_id: str) -> str | None:
        with self.lock:
            item = self.latest.get(delivery_id)
        return None if item is None else str(item["status"])


@pytest.fixture
def watch(api: Api, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Watcher]]:
    # A reader thread blocks until the stream's next write: with the production keep-alive (15 s)
    # each test's teardown waited that long after closing its clients.
    monkeypatch.setattr("absync.web.live.KEEPALIVE_SECONDS", 1.0)
    clients: list[httpx.Client] = []
    threads: list[threading.Thread] = []

    def start(who: str, path: str = "/api/v1/deliveries/stream") -> Watcher:
        client = api.client(who)
        clients.append(client)
        watcher = Watcher()
        thread = threading.Thread(target=watcher.read, args=(client, path), daemon=True)
        thread.start()
        threads.append(thread)
        assert watcher.connected.wait(WAIT), "the stream did not open"
        return watcher

    yield start
    for client in clients:
        client.close()
    for thread in threads:
        thread.join(10)


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_one_feed_scopes_each_stream_to_its_tenant_and_destination(
    api: Api, watch: Callable[..., Watcher]
) -> None:
    acme = watch("acme-view")
    everyone = watch("view")
    acme_b = watch("acme-view", "/api/v1/deliveries/stream?destination=dst-b")
    assert len(feed_of(api.component.app).subscribers) == 3  # one feed, three subscribers
    theirs = fact(tenant="globex", destination_id="dst-b", status=Status.ERROR)
    ours_a = fact(tenant="acme", destination_id="dst-a", status=Status.PENDING)
    api.seed(theirs, ours_a)
    ours_b = fact(tenant="acme", destination_id="dst-b", status=Status.SUCCESSFUL)  # written last
    api.seed(ours_b)
    # Batches follow the order of the writes: once the last one is there, every earlier one is too.
    eventually(lambda: everyone.status_of(ours_b.delivery_id) == "SUCCESSFUL", "all-tenant stream")
    eventually(lambda: acme.status_of(ours_b.delivery_id) == "SUCCESSFUL", "acme stream")
    eventually(lambda: acme_b.status_of(ours_b.delivery_id) == "SUCCESSFUL", "acme dst-b stream")
    assert set(everyone.latest) == {theirs.delivery_id, ours_a.delivery_id, ours_b.delivery_id}
    assert set(acme.latest) == {ours_a.delivery_id, ours_b.delivery_id}
    assert set(acme_b.latest) == {ours_b.delivery_id}
    # The counters come in the same scope as /deliveries/stats.
    with api.client("acme-view") as client:
        assert acme.stats == client.get("/api/v1/deliveries/stats").json()
        assert acme_b.stats == client.get("/api/v1/deliveries/stats?destination=dst-b").json()
    with api.client("view") as client:
        eventually(lambda: everyone.stats == client.get("/api/v1/deliveries/stats").json(), "all counters")


def test_coalesced_batches_end_on_the_views_final_state(api: Api, watch: Callable[..., Watcher]) -> None:
    watcher = watch("view")
    firsts = [fact(status=Status.PENDING, employee_name=f"Person {i}") for i in range(40)]
    api.seed(*firsts)
    seconds = [then(f, Status.ERROR) for f in firsts]
    api.seed(*seconds)
    lasts = [
        then(f, Status.SUCCESSFUL) if i % 2 else then(f, Status.SUPERSEDED) for i, f in enumerate(seconds)
    ]
    api.seed(*lasts)
    with api.client("view") as client:
        view = {d["delivery_id"]: d for d in client.get("/api/v1/deliveries?limit=100").json()["items"]}
        stats = client.get("/api/v1/deliveries/stats").json()
    assert len(view) == 40
    eventually(lambda: watcher.latest == view and watcher.stats == stats, "the stream's final view")
    assert set(watcher.events) == {"deliveries"}


def big(status: DeliveryStatus, n: int) -> DeliveryStatus:
    """A fact whose delivery serialises to ~32 kB (its error): a few fill a socket's buffers."""
    return replace(status, error=f"{n:06d} " + "upstream said no; " * 1800)


def test_a_client_that_never_reads_is_dropped_and_the_others_keep_receiving(
    api: Api, watch: Callable[..., Watcher]
) -> None:
    feed = install_feed(api.component.app, max_pending=50)
    reader = watch("view")
    # The silent client: a small receive buffer (64 kB: a 4 kB one drains its backlog at ~40 kB/s at the end), one request, then never a read.
    silent = socket.create_connection(("127.0.0.1", int(api.base_url.rsplit(":", 1)[1])))
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    request = f"GET /api/v1/deliveries/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.tokens['view']}\r\n\r\n"
    silent.sendall(request.encode())
    eventually(lambda: len(feed.subscribers) == 2, "the silent client subscribed")
    try:
        written: list[DeliveryStatus] = []
        for round_ in range(12):  # 240 deliveries of ~32 kB, 20 at a time (under 50 per tick)
            batch = [big(fact(status=Status.PENDING), round_ * 20 + i) for i in range(20)]
            api.seed(*batch)
            written.extend(batch)
        # The reader got every delivery while the silent client still has not read a byte ...
        eventually(lambda: all(reader.status_of(f.delivery_id) == "PENDING" for f in written), "reader")
        # ... and the silent one holds no queue in the feed any more: resynced or disconnected.
        eventually(lambda: len(feed.subscribers) == 1, "the silent client was not dropped")
        assert not reader.ended.is_set()
        with api.client(token=METRICS_TOKEN) as client:
            assert "absync_live_streams 1.0" in client.get("/metrics").text
        last = fact(status=Status.SUCCESSFUL)
        api.seed(last)
        eventually(lambda: reader.status_of(last.delivery_id) == "SUCCESSFUL", "reader after the drop")
        # When it reads at last, its stream tells it to reload, or was cut (a write it did not take
        # within SEND_TIMEOUT_SECONDS): either way it ends.
        silent.settimeout(WAIT)
        received = bytearray()
        while chunk := silent.recv(1 << 20):
            received.extend(chunk)
            if b"event: resync" in received:
                break
        assert b"event: resync" in received or not chunk
    finally:
        silent.close()


def test_streams_are_bounded_per_token_and_per_process(api: Api, watch: Callable[..., Watcher]) -> None:
    """One more stream than a token may hold is a 429 with Retry-After (a leaked token cannot hold the
    process's connections); the token's open streams and other tokens' go on."""
    feed = feed_of(api.component.app)
    feed.max_per_token, feed.max_streams = 2, 3
    first = watch("acme-view")
    watch("acme-view")
    with api.client("acme-view") as client:
        refused = client.get("/api/v1/deliveries/stream")
    assert refused.status_code == 429, refused.text
    assert "this token" in refused.json()["detail"] and refused.headers["retry-after"] == "30"
    watch("view")  # another token: the third stream of the process
    with api.client("view") as client:
        full = client.get("/api/v1/deliveries/stream")
    assert full.status_code == 429 and "this process" in full.json()["detail"], full.text
    assert len(feed.subscribers) == 3
    ours = fact(tenant="acme", destination_id="dst-a", status=Status.SUCCESSFUL)
    api.seed(ours)
    eventually(lambda: first.status_of(ours.delivery_id) == "SUCCESSFUL", "an open stream goes on")
