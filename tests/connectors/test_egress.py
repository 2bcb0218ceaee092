"""The egress policy against real sockets: with production's policy no connector of any kind opens a
connection to loopback, in any spelling of it, nor to a name resolving to it (DNS rebinding
included); the operator gets one uniform error whatever is (or is not) listening there."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from connectors.base import CallRecorder, ConnectorOptions
from connectors.egress import NOT_ALLOWED, AddressNotAllowed, EgressPolicy
from connectors.exceptions import ConfigurationError, ConnectorError
from tests.connectors.deliveries import make_delivery
from tests.connectors.egress_targets import KINDS, Listener, Redirector, closed_port, open_target

PRODUCTION = ConnectorOptions(timeout=3)
LOOPBACK = ConnectorOptions(timeout=3, egress=EgressPolicy.build(["127.0.0.0/8"]))

LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "localhost",
    "2130706433",
    "0x7f.1",
    "127.1",
    "[::ffff:127.0.0.1]",
    "0.0.0.0",
    "[::]",
    "[::1]",
]
REFUSED_ADDRESSES = [
    *LOOPBACK_SPELLINGS,
    "0177.0.0.1",
    "LOCALHOST.",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",  # CGNAT
    "169.254.169.254",  # cloud metadata
    "metadata.google.internal",
    "168.63.129.16",  # Azure WireServer
    "192.0.0.192",  # Oracle Cloud metadata
    "[fd00:ec2::254]",  # AWS metadata over IPv6
    "[fe80::1]",
    "[fc00::1]",
    "224.0.0.1",
    "[ff02::1]",
    "240.0.0.1",
    "255.255.255.255",
    "[::127.0.0.1]",  # IPv4-compatible
    "[64:ff9b::7f00:1]",  # NAT64 of 127.0.0.1
    "[2002:7f00:1::1]",  # 6to4 of 127.0.0.1
    "[::ffff:169.254.169.254]",
    "name-that-does-not-resolve.invalid",
]


@pytest.mark.parametrize("host", REFUSED_ADDRESSES)
def test_production_policy_refuses_every_spelling_of_an_internal_address(host: str) -> None:
    with pytest.raises(AddressNotAllowed) as refused:
        EgressPolicy().resolve(host, 443)
    assert str(refused.value) == NOT_ALLOWED


@pytest.mark.parametrize("host", ["93.184.215.14", "[2606:4700:4700::1111]", "1.1.1.1"])
def test_public_addresses_are_allowed(host: str) -> None:
    assert EgressPolicy().resolve(host, 443) == [host.strip("[]")]


def test_allowed_networks_widen_the_policy_but_never_to_metadata() -> None:
    policy = EgressPolicy.build(["10.0.0.0/8", "169.254.0.0/16", "fd00::/8"])
    assert policy.resolve("10.1.2.3", 80) == ["10.1.2.3"]
    assert policy.resolve("169.254.10.10", 80) == ["169.254.10.10"]
    for metadata in ("169.254.169.254", "[fd00:ec2::254]", "metadata.google.internal"):
        with pytest.raises(AddressNotAllowed):
            policy.resolve(metadata, 80)
    with pytest.raises(AddressNotAllowed):
        policy.resolve("192.168.0.1", 80)


def test_development_allows_loopback_only() -> None:
    policy = EgressPolicy(allow_loopback=True)
    assert policy.resolve("127.0.0.1", 80) == ["127.0.0.1"]
    assert set(policy.resolve("localhost", 80)) <= {"127.0.0.1", "::1"}
    for host in ("10.0.0.1", "169.254.169.254", "192.168.1.1"):
        with pytest.raises(AddressNotAllowed):
            policy.resolve(host, 80)


# -- every connector kind, real sockets --------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


async def _test_connection(
    kind: str, host: str, port: int, options: ConnectorOptions
) -> tuple[str, list[Any]]:
    """What an operator sees after Test connection: the error and the recorded calls (no timings)."""
    connector = await open_target(kind, host, port, options)
    recorder = CallRecorder(connector.secrets)
    try:
        with pytest.raises(ConnectorError) as failed:
            await connector.test_connection(recorder)
    finally:
        await connector.close()
    recorder.fail_open_calls(failed.value.message)
    calls = [(c.method, c.url, c.response_status, c.response_body, c.error) for c in recorder.calls]
    return failed.value.message, calls


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
@pytest.mark.parametrize("kind", KINDS)
async def test_no_connector_reaches_loopback_under_the_production_policy(
    kind: str, host: str, listener: Listener
) -> None:
    connector = await open_target(kind, host, listener.port, PRODUCTION)
    try:
        with pytest.raises(ConfigurationError) as refused:
            await connector.test_connection(CallRecorder(connector.secrets))
        if kind == "http":
            with pytest.raises(ConfigurationError) as refused_delivery:
                await connector.deliver(make_delivery(), CallRecorder(connector.secrets))
            assert refused_delivery.value.message == NOT_ALLOWED
    finally:
        await connector.close()
    assert refused.value.message == NOT_ALLOWED
    assert listener.accepted == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_the_same_targets_are_reached_when_loopback_is_allowed(kind: str, listener: Listener) -> None:
    """The control: the refusals above are the policy's, not a broken URL."""
    message, _ = await _test_connection(kind, "127.0.0.1", listener.port, LOOPBACK)
    assert message != NOT_ALLOWED
    assert listener.accepted >= 1


@pytest.mark.parametrize("kind", KINDS)
async def test_open_closed_and_hung_ports_look_the_same(kind: str, listener: Listener) -> None:
    """No port scanner: an open port, a closed one and a hung service give identical answers."""
    hung = Listener(hold=True)
    try:
        answers = [
            await _test_connection(kind, "127.0.0.1", port, PRODUCTION)
            for port in (listener.port, hung.port, closed_port())
        ]
    finally:
        hung.close()
    normalised = [(m, [(c[0], c[1].split(":")[0], *c[2:]) for c in calls]) for m, calls in answers]
    assert normalised[0] == normalised[1] == normalised[2]
    assert answers[0][0] == NOT_ALLOWED
    assert listener.accepted == hung.accepted == 0


# -- DNS rebinding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_name_rebound_to_loopback_after_the_check_is_not_reached(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rebind.test`` first resolves to 127.0.0.2 (allowed here), then to 127.0.0.1 (refused). The
    connection must go to the address that was checked: a client that resolved the name again
    after the check would land on 127.0.0.1."""
    refused = Listener("127.0.0.1")
    allowed = Listener("127.0.0.2", refused.port)  # the same port: only the address differs
    real = socket.getaddrinfo
    answers: list[str] = []

    def rebinding_dns(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            address = "127.0.0.2" if not answers else "127.0.0.1"
            answers.append(address)
            return real(address, port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_dns)
    options = ConnectorOptions(timeout=3, egress=EgressPolicy.build(["127.0.0.2/32"]))
    try:
        for _ in range(2):
            message, _ = await _test_connection(kind, "rebind.test", allowed.port, options)
    finally:
        allowed.close()
        refused.close()
    assert answers[0] == "127.0.0.2" and len(answers) >= 2
    assert allowed.accepted >= 1
    assert refused.accepted == 0
    assert message == NOT_ALLOWED  # the second test: the name now resolves to a refused address


@pytest.mark.parametrize("kind", ["http", "google", "slack", "ews"])
async def test_a_redirect_to_a_refused_address_is_not_followed_there(kind: str, listener: Listener) -> None:
    """An allowed server (127.0.0.2 here) redirecting to a refused one (127.0.0.1): the libraries that
    follow redirects (urllib, httplib2, requests) connect through the policy again and are refused."""
    redirector = Redirector("127.0.0.2", f"http://127.0.0.1:{listener.port}/internal")
    options = ConnectorOptions(timeout=3, egress=EgressPolicy.build(["127.0.0.2/32"]))
    try:
        await _test_connection(kind, "127.0.0.2", redirector.port, options)
    finally:
        redirector.close()
    assert redirector.answered >= 1
    assert listener.accepted == 0
