"""A destination answering with a huge body costs what absync keeps of it, not its size: the HTTP
connector reads the kept 20 kB and no further; the API clients of the other kinds stop at 8 MB."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest

from connectors.base import CallRecorder, ConnectorOptions
from connectors.egress import EgressPolicy
from connectors.egress_clients import DEFAULT_MAX_RESPONSE_BYTES
from connectors.exceptions import ConnectorError, PermanentError
from connectors.wire import NOT_READ
from schemas.delivery import RESPONSE_BODY_LIMIT
from tests.connectors.deliveries import make_delivery
from tests.connectors.egress_targets import HugeAnswer, open_target

SIZE = 300 * 1024 * 1024
LOOPBACK = ConnectorOptions(timeout=10, egress=EgressPolicy.build(["127.0.0.0/8"]))
NEVER_SENT = 64 * 1024 * 1024
"""What the server may have written before the client closed: what was read plus socket buffers,
far below the 300 MB announced (a client reading it all would take all of it)."""


@pytest.fixture
def huge() -> Iterator[HugeAnswer]:
    server = HugeAnswer(SIZE, 400)
    yield server
    server.close()


async def test_http_keeps_20_kb_and_reads_no_further(huge: HugeAnswer) -> None:
    connector = await open_target("http", "127.0.0.1", huge.port, LOOPBACK)
    recorder = CallRecorder(connector.secrets)
    tracemalloc.start()
    try:
        with pytest.raises(PermanentError) as failed:
            await connector.deliver(make_delivery(), recorder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await connector.close()
    body = recorder.calls[0].response_body or ""
    assert len(body) == RESPONSE_BODY_LIMIT and body.endswith(NOT_READ)
    assert "answered 400: xxxx" in failed.value.message
    assert 0 < huge.sent < NEVER_SENT
    assert peak < 4 * 1024 * 1024, f"{peak / 1e6:.1f} MB allocated at the peak"


@pytest.mark.parametrize("kind", ["graph", "google", "slack", "adp", "ews"])
async def test_api_clients_stop_reading_at_their_cap(kind: str) -> None:
    server = HugeAnswer(SIZE, 200, tls=kind in ("graph", "adp"))
    extra = {"ca_bundle": server.ca_file} if server.ca_file else {}
    connector = await open_target(kind, "127.0.0.1", server.port, LOOPBACK, **extra)
    tracemalloc.start()
    try:
        with pytest.raises(ConnectorError):
            await connector.test_connection(CallRecorder(connector.secrets))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await connector.close()
        server.close()
    assert DEFAULT_MAX_RESPONSE_BYTES < server.sent < NEVER_SENT  # read up to the cap, not beyond
    assert peak < 4 * DEFAULT_MAX_RESPONSE_BYTES, f"{peak / 1e6:.1f} MB allocated at the peak"
