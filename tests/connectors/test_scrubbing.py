"""Receivers that echo what they got: no secret, in any form a connector sends it, comes back in an
error text or a recorded call (connector level), nor in ``delivery-status`` (real broker)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from pydantic import SecretStr

from connectors.base import CallRecorder
from connectors.exceptions import ConnectorError
from connectors.graph import GraphConnector
from connectors.http import HttpConnector
from connectors.redact import Redactor, secret_forms
from connectors.slack import SlackConnector
from schemas.delivery import Status
from schemas.destination import Destination
from schemas.models import ChangeKind
from streams.destinations import publish_destination
from streams.logging import MASK
from streams.secrets import SecretBox
from streams.settings import Settings
from tests.connectors.deliveries import make_delivery, make_destination
from tests.delivery.harness import Feed, RunningWorker, StatusLog, change
from tests.fakes.graph import FakeGraph
from tests.fakes.loopback import LoopbackServer, Request, Response, loopback_options

KEY = b"signing-key-for-echo-tests-0123456789"
SIGNING = "whsec_" + base64.b64encode(KEY).decode()
TOKEN = "s3cr3t-bearer-9d2f7a1c"
USER, PASSWORD = "hook-user", "hook-pass-5e8b"
HEADER_VALUE = "api-key-2b7c9e4f"


def echo(request: Request) -> Response:
    """A hostile receiver: answers 400 with every header it got and every form of the key it knows."""
    return Response(
        400,
        {
            "headers": request.headers,
            "body": request.body.decode(errors="replace"),
            "key_forms": [KEY.hex(), base64.b64encode(KEY).decode().rstrip("="), SIGNING],
            "basic_decoded": f"{USER}:{PASSWORD}",
        },
    )


@pytest.fixture
def echo_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer(echo).start()
    yield server
    server.stop()


def forms_of_every_secret(secrets: dict[str, str] | None = None) -> list[str]:
    """The destination's secrets in each form they travel or are echoed in."""
    secrets = secrets if secrets is not None else {"token": TOKEN}
    forms = [*secrets.values(), SIGNING, KEY.hex(), base64.b64encode(KEY).decode().rstrip("=")]
    if "password" in secrets:
        forms.append(base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    return forms


def shown(error: ConnectorError, recorder: CallRecorder) -> str:
    """Everything an operator can read about the attempt."""
    return error.message + repr(recorder.calls)


@pytest.mark.parametrize(
    ("auth", "settings", "secrets"),
    [
        ("bearer", {}, {"token": TOKEN}),
        ("basic", {}, {"username": USER, "password": PASSWORD}),
        ("header", {"auth_header_name": "X-Api-Key"}, {"auth_header_value": HEADER_VALUE}),
        ("header", {"auth_header_name": "X-Custom-Auth"}, {"auth_header_value": HEADER_VALUE}),
    ],
)
async def test_http_errors_built_from_an_echoing_answer_carry_no_secret(
    echo_server: LoopbackServer, auth: str, settings: dict[str, Any], secrets: dict[str, str]
) -> None:
    destination = Destination(
        id="dst-echo",
        tenant="acme",
        name="echo",
        kind="http",
        settings={"url": echo_server.url + "/hook", "auth": auth, **settings},
    )
    all_secrets = {**secrets, "signing_secrets": SIGNING}
    connector = HttpConnector(
        destination, {k: SecretStr(v) for k, v in all_secrets.items()}, loopback_options(5)
    )
    await connector.setup()
    try:
        for attempt in ("deliver", "test_connection"):
            recorder = CallRecorder(connector.secrets)
            with pytest.raises(ConnectorError) as failed:
                if attempt == "deliver":
                    await connector.deliver(make_delivery(), recorder)
                else:
                    await connector.test_connection(recorder)
            text = shown(failed.value, recorder)
            assert "answered 400" in failed.value.message
            leaked = [form for form in forms_of_every_secret(secrets) if form in text]
            assert leaked == [], f"{attempt}: {leaked}"
    finally:
        await connector.close()


async def test_graph_errors_carry_no_access_token_obtained_at_run_time() -> None:
    """The access token is no destination secret: the recorder learns it from the header it sent."""
    tokens: list[str] = []

    def graph_echo(request: Request) -> Response:
        tokens.append(request.headers["authorization"].removeprefix("Bearer "))
        return Response(400, {"error": {"code": "BadRequest", "message": request.headers["authorization"]}})

    with FakeGraph() as fake:
        fake.add_mailbox("jane@acme.com")
        server = LoopbackServer(graph_echo).start()
        try:
            settings = {**fake.settings(), "graph_base_url": server.url + "/v1.0"}
            connector = GraphConnector(
                make_destination("graph", settings),
                {"client_secret": SecretStr(fake.client_secret)},
                loopback_options(5),
            )
            await connector.setup()
            recorder = CallRecorder(connector.secrets)
            with pytest.raises(ConnectorError) as failed:
                await connector.deliver(make_delivery(), recorder)
            await connector.close()
        finally:
            server.stop()
    assert failed.value.message == f"Graph answered 400 BadRequest: {MASK}"  # the echo, masked
    text = shown(failed.value, recorder)
    assert tokens and all(len(token) > 20 and token not in text for token in tokens)
    assert fake.client_secret not in text


async def test_slack_errors_carry_no_bot_token() -> None:
    def slack_echo(request: Request) -> Response:
        return Response(200, {"ok": False, "error": request.headers.get("authorization")})

    server = LoopbackServer(slack_echo).start()
    try:
        connector = SlackConnector(
            make_destination("slack", {"channel": "C1", "base_url": server.url + "/api/"}),
            {"bot_token": SecretStr("xoxb-111-222-echoedtoken")},
            loopback_options(5),
        )
        recorder = CallRecorder(connector.secrets)
        with pytest.raises(ConnectorError) as failed:
            await connector.test_connection(recorder)
    finally:
        server.stop()
    assert "xoxb-111-222-echoedtoken" not in shown(failed.value, recorder)


# -- end to end: the worker, the broker, the delivery-status records --------------------------------


def test_delivery_status_records_carry_no_echoed_token(
    settings: Settings, echo_server: LoopbackServer
) -> None:
    box = SecretBox.from_settings(settings)
    publish_destination(
        settings,
        Destination(
            id="dst-http",
            tenant="acme",
            name="echo",
            kind="http",
            settings={"url": echo_server.url + "/hook", "auth": "bearer"},
            secrets={"token": box.encrypt(TOKEN), "signing_secrets": box.encrypt(SIGNING)},
            revision=1,
        ),
    )
    delivery = change("abs-echo", 1, ChangeKind.APPROVED)
    statuses = StatusLog(settings)
    try:
        with RunningWorker(settings):
            Feed(settings).deliveries(delivery)
            final = statuses.wait_settled(delivery.delivery_id)
        events = statuses.of(delivery.delivery_id)
    finally:
        statuses.close()
    assert final.status is Status.ERROR
    assert "answered 400" in (final.error or "")
    text = json.dumps([repr(e) for e in events])
    assert [form for form in forms_of_every_secret() if form in text] == []


def test_every_wire_form_of_a_secret_is_masked() -> None:
    """The forms connectors send secrets in, as a hostile answer could echo them back."""
    client_secret = 'Zx8~q+Pw/7=r&s t"u\\v'
    key = base64.b64encode(KEY).decode()
    pem_line = base64.b64encode(bytes(range(48))).decode()
    pem = f"-----BEGIN PRIVATE KEY-----\n{pem_line}\n{pem_line[::-1]}\n-----END PRIVATE KEY-----\n"
    service_account = json.dumps(
        {"type": "service_account", "private_key": pem, "private_key_id": "abcdef0123456789"}
    )
    redactor = Redactor(
        secret_forms(
            {
                "client_secret": SecretStr(client_secret),
                "signing_secrets": SecretStr(f"{SIGNING}, whsec_{base64.b64encode(b'x' * 32).decode()}"),
                "username": SecretStr(USER),
                "password": SecretStr(PASSWORD),
                "service_account_json": SecretStr(service_account),
                "client_key_pem": SecretStr(pem),
            }
        )
    )
    echoed = [
        urlencode({"grant_type": "client_credentials", "client_secret": client_secret}),  # OAuth form body
        quote(client_secret, safe=""),
        json.dumps({"client_secret": client_secret}),  # JSON-escaped
        "Authorization: Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
        SIGNING,
        key,
        key.rstrip("="),
        base64.urlsafe_b64encode(KEY).decode(),
        KEY.hex(),
        KEY.hex().upper(),
        pem_line,  # one line of a PEM key
        json.dumps({"private_key": pem}),  # the key inside a JSON document (\n escaped)
        "abcdef0123456789",
    ]
    for text in echoed:
        scrubbed = redactor.scrub(f"answer: {text} end")
        assert scrubbed.startswith("answer: ") and scrubbed.endswith(" end")
        for secret in (client_secret, PASSWORD, KEY.hex(), pem_line, "abcdef0123456789", key.rstrip("=")):
            assert secret not in scrubbed, (text, scrubbed)
    assert redactor.scrub("nothing secret here") == "nothing secret here"
