"""Every destination kind, set up in the console as an operator does (issue 16 item 2).

For each kind: create the destination through its form (rendered from the kind's declaration), run
"Test connection" against that kind's local fake (the real client library talks to it on loopback),
then edit the destination and show that its secrets stay write-only: the form never shows a secret,
and saving without entering them again keeps the stored ones working (the test still succeeds, and
each fake checks the credential it receives); a wrong secret entered then makes the test say
plainly that it fails, and why. One console (broker topics, database, web server) and
one set of fakes serve the whole module; each test has its own destination id.

The README's screenshots of the destination forms and of a connection test are taken here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import Page, expect

from connectors.registry import declaration, kinds
from streams.settings import Settings
from streams.topics import create_topics
from tests.browser.conftest import SCREENSHOTS, Console, running_console, sign_in
from tests.conftest import delete_topics, make_settings
from tests.connectors.egress_targets import SERVICE_ACCOUNT
from tests.delivery.harness import SIGNING_SECRET
from tests.fakes.adp import TOKEN_PATH, FakeAdp
from tests.fakes.ews import FakeExchange
from tests.fakes.google import FakeGoogle
from tests.fakes.graph import FakeGraph
from tests.fakes.slack import FakeSlack

pytestmark = pytest.mark.browser

JANE = "jane@acme.com"
WRONG = {
    "client_secret": "wrong-client-secret-1d4e8a",
    "password": "Wrong-Pa55word-7c2f9b",
    "bot_token": "xoxb-9-9-WrongBotToken3e1",
    "signing_secrets": "whsec_" + "A" * 32,
    "service_account_json": SERVICE_ACCOUNT,
}
"""A wrong value of each kind's first secret (Google's: the key of another service account)."""
REFUSED = {
    "graph": "invalid_client",
    "ews": "Exchange rejected the credentials",
    "google": "Invalid JWT Signature",
    "slack": "invalid_auth: check the bot token",
    "adp": "invalid_client",
    "http": "answered 401",
}
"""What the connection test says when the fake refuses the wrong secret."""
SLACK_CHANNEL = "C0HRABSENCES"


@dataclass
class Fakes:
    graph: FakeGraph
    ews: FakeExchange
    google: FakeGoogle
    slack: FakeSlack
    adp: FakeAdp


@pytest.fixture(scope="module")
def shared_console(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    settings: Settings = make_settings(bootstrap, tmp_path_factory.mktemp("kinds"))
    create_topics(settings)
    try:
        with running_console(settings) as console:
            yield console
    finally:
        delete_topics(settings)


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    with (
        FakeGraph() as graph,
        FakeExchange() as ews,
        FakeGoogle() as google,
        FakeSlack() as slack,
        FakeAdp() as adp,
    ):
        ews.add_mailbox(JANE)
        google.add_user(JANE)
        slack.add_channel(SLACK_CHANNEL, "hr-absences")
        yield Fakes(graph, ews, google, slack, adp)


def other_settings(page: Page, values: dict[str, object]) -> None:
    page.get_by_label("Other settings (JSON object)").fill(json.dumps(values))


@dataclass
class Kind:
    """How an operator fills one kind's form against its fake; ``secrets`` are the values entered
    (none may ever appear in the page again) by secret name."""

    fill: Callable[[Page, Console, Fakes], None]
    secrets: Callable[[Console, Fakes], dict[str, str]]
    works: Callable[[Console, Fakes], str]
    """What the connection test's result says when the fake accepted the stored credentials."""


def _graph(page: Page, console: Console, fakes: Fakes) -> None:
    fake = fakes.graph
    page.get_by_label(re.compile(r"^Microsoft Entra tenant id")).fill(fake.tenant_id)
    page.get_by_label(re.compile(r"^Application \(client\) id")).fill(fake.client_id)
    page.get_by_label("Event title").fill("Away: {employee_name}")
    other_settings(
        page,
        {"authority_host": fake.url, "graph_base_url": f"{fake.url}/v1.0", "ca_bundle": fake.ca_file},
    )
    page.get_by_label("Client secret").fill(fake.client_secret)


def _ews(page: Page, console: Console, fakes: Fakes) -> None:
    fake = fakes.ews
    page.get_by_label(re.compile(r"^EWS URL")).fill(fake.url)
    page.locator('[data-setting="username"]').fill(fake.username)
    page.get_by_label("Authentication").select_option("basic")
    page.get_by_label("Server version").fill("Exchange2016")
    page.get_by_label("Mailbox for the connection test").fill(JANE)
    page.get_by_label("Service account password").fill(fake.password)


def _google(page: Page, console: Console, fakes: Fakes) -> None:
    fake = fakes.google
    page.get_by_label("User for the connection test").fill(JANE)
    other_settings(page, {"token_uri": f"{fake.url}/token", "api_root": f"{fake.url}/"})
    key_file = page.get_by_label("Service account key (JSON file)")
    expect(key_file).to_have_attribute("type", "file")
    # A file that is not a service-account key is refused, saying why, and nothing is created.
    wrong = {"type": "authorized_user", "client_id": "1", "client_secret": "cs-4f0c9e2b7d"}
    key_file.set_input_files(_file("credentials.json", json.dumps(wrong)))
    page.get_by_role("button", name="Create destination").click()
    expect(page.locator("#form-state")).to_contain_text("not a service-account key file")
    assert "cs-4f0c9e2b7d" not in page.content()
    # A file above the bound is refused in the browser before it is read.
    key_file.set_input_files(_file("huge.json", " " * (16 * 1024 + 1)))
    page.get_by_role("button", name="Create destination").click()
    expect(page.locator("#form-state")).to_contain_text("huge.json is larger than 16 kB")
    key_file.set_input_files(_file("acme-project-k1.json", json.dumps(fake.service_account_info())))
    expect(page.locator("#form-state")).to_be_hidden()
    page.screenshot(path=str(SCREENSHOTS / "destination-google.png"), full_page=True)


def _file(name: str, text: str) -> dict[str, object]:
    return {"name": name, "mimeType": "application/json", "buffer": text.encode()}


def _slack(page: Page, console: Console, fakes: Fakes) -> None:
    page.get_by_label(re.compile(r"^Channel id")).fill(SLACK_CHANNEL)
    page.get_by_label("Channel name").fill("#hr-absences")
    page.get_by_label("Post time").fill("09:30")
    page.get_by_label("Time zone").fill("Europe/Paris")
    page.get_by_label("Language").select_option("fr")
    page.get_by_label("Also list tomorrow's absences").check()
    other_settings(page, {"base_url": fakes.slack.api_url()})
    page.get_by_label("Bot token").fill(fakes.slack.token)
    page.screenshot(path=str(SCREENSHOTS / "destination-slack.png"), full_page=True)


def _adp(page: Page, console: Console, fakes: Fakes) -> None:
    fake = fakes.adp
    page.get_by_label(re.compile(r"^Client id")).fill(fake.client_id)
    page.get_by_label("Token URL").fill(fake.url + TOKEN_PATH)
    page.get_by_label("API base URL").fill(fake.url)
    page.get_by_label("Use the client certificate (mutual TLS)").check()
    other_settings(page, {"ca_bundle": fake.ca_file})
    page.get_by_label("Client secret").fill(fake.client_secret)
    page.get_by_label("Client certificate (PEM)").fill(fake.client_cert_pem)
    page.get_by_label("Client private key (PEM)").fill(fake.client_key_pem)


def _http(page: Page, console: Console, fakes: Fakes) -> None:
    page.get_by_label(re.compile(r"^URL\b")).fill(console.receiver.url + "/absences")
    page.get_by_label("Signing secrets").fill(SIGNING_SECRET)


KINDS = {
    "graph": Kind(
        _graph,
        lambda c, f: {"client_secret": f.graph.client_secret},
        lambda c, f: f"token acquired for app {f.graph.client_id} in tenant {f.graph.tenant_id}",
    ),
    "ews": Kind(
        _ews, lambda c, f: {"password": f.ews.password}, lambda c, f: f"calendar of {JANE} reachable"
    ),
    "google": Kind(
        _google,
        lambda c, f: {"service_account_json": json.dumps(f.google.service_account_info())},
        lambda c, f: f"token acquired for {JANE}",
    ),
    "slack": Kind(_slack, lambda c, f: {"bot_token": f.slack.token}, lambda c, f: "can post in #hr-absences"),
    "adp": Kind(
        _adp,
        lambda c, f: {
            "client_secret": f.adp.client_secret,
            "client_cert_pem": f.adp.client_cert_pem,
            "client_key_pem": f.adp.client_key_pem,
        },
        lambda c, f: f"token acquired for ADP client {f.adp.client_id}",
    ),
    "http": Kind(
        _http,
        lambda c, f: {"signing_secrets": SIGNING_SECRET},
        lambda c, f: f"POST {c.receiver.url}/absences answered 200",
    ),
}


def _shows_no_secret(page: Page, secrets: dict[str, str]) -> None:
    content = page.content()
    for value in secrets.values():
        for line in value.splitlines():  # a PEM or a key file: no line of it either
            if len(line.strip()) >= 16:
                assert line.strip() not in content


def _test_connection(page: Page, dest_id: str, works: str) -> None:
    row = page.locator(f'tr[data-destination-id="{dest_id}"]')
    row.get_by_role("button", name="Test connection").click()
    result = page.locator("#test-result")
    expect(result.get_by_role("status")).to_contain_text("Works: ")
    expect(result.get_by_role("status")).to_contain_text(works)


@pytest.mark.parametrize("kind", list(KINDS))
def test_set_up_and_test_each_kind_with_write_only_secrets(
    shared_console: Console, fakes: Fakes, page: Page, kind: str
) -> None:
    console, case = shared_console, KINDS[kind]
    label = declaration(kind).label
    dest_id, name = f"acme:{kind}", f"{label} (acme)"
    secrets, works = case.secrets(console, fakes), case.works(console, fakes)

    sign_in(page, console, "configure")
    page.goto(console.url("/console/destinations"))
    page.get_by_label("New destination of kind").select_option(kind)
    page.get_by_role("button", name="Create…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"New {label} destination")
    page.get_by_label("Id", exact=True).fill(dest_id)
    page.get_by_label("Tenant", exact=True).fill("acme")
    page.get_by_label("Name", exact=True).fill(name)
    case.fill(page, console, fakes)
    page.get_by_role("button", name="Create destination").click()

    row = page.locator(f'tr[data-destination-id="{dest_id}"]')
    expect(row).to_contain_text(name)
    with console.api("configure") as client:
        stored = client.get(f"/api/v1/destinations/{dest_id}").json()
    assert stored["kind"] == kind
    assert {k: v for k, v in stored["secrets"].items() if k in secrets} == dict.fromkeys(secrets, "***")
    _test_connection(page, dest_id, works)
    if kind == "slack":
        page.screenshot(path=str(SCREENSHOTS / "destinations-test.png"), full_page=True)
    _shows_no_secret(page, secrets)

    # Edit: every secret field is empty and marked "(set)"; the page holds no secret.
    row.get_by_role("link", name=name).click()
    expect(page.get_by_label("Name", exact=True)).to_have_value(name)
    for secret_name in secrets:
        expect(page.locator(f'[data-secret-state="{secret_name}"]')).to_have_text("(set)")
        expect(page.locator(f'[data-secret="{secret_name}"]')).to_have_value("")
    _shows_no_secret(page, secrets)
    page.get_by_label("Name", exact=True).fill(f"{name}, renamed")
    page.get_by_role("button", name="Save changes").click()
    expect(row).to_contain_text(f"{name}, renamed")

    # Saved without entering the secrets again: the stored ones still work against the fake.
    _test_connection(page, dest_id, works)
    with console.api("configure") as client:
        stored = client.get(f"/api/v1/destinations/{dest_id}").json()
        audit = client.get(f"/api/v1/destinations/{dest_id}/audit").json()
    assert stored["revision"] == 2 and stored["name"] == f"{name}, renamed"
    assert [entry["action"] for entry in audit] == ["update", "create"]
    assert "secrets" not in audit[0]["changes"]
    _shows_no_secret(page, secrets)

    # A wrong secret entered: saved (write-only, so unchecked against the far end), and the test
    # says plainly that it fails, without showing the secret.
    row.get_by_role("link", name=f"{name}, renamed").click()
    expect(page.get_by_label("Name", exact=True)).to_have_value(f"{name}, renamed")
    first = next(iter(secrets))
    field = page.locator(f'[data-secret="{first}"]')
    if first == "service_account_json":
        field.set_input_files(_file("another-project.json", WRONG[first]))
    else:
        field.fill(WRONG[first])
    page.get_by_role("button", name="Save changes").click()
    row.get_by_role("button", name="Test connection").click()
    failed = page.locator("#test-result").get_by_role("status")
    expect(failed).to_contain_text("Failed: ")
    expect(failed).to_contain_text(REFUSED[kind])
    _shows_no_secret(page, {first: WRONG[first]})


def test_every_declared_kind_is_set_up_here() -> None:
    """A new kind needs its console test: how an operator fills its form against its fake."""
    assert sorted(KINDS) == sorted(kinds())
