"""Destinations with the configure right: create through the form, edit with write-only secrets,
disable and enable, test the connection against the loopback receiver."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Console, sign_in
from tests.delivery.harness import SIGNING_SECRET

pytestmark = pytest.mark.browser


def test_create_edit_disable_and_test_a_webhook_destination(console: Console, page: Page) -> None:
    sign_in(page, console, "configure")
    page.goto(console.url("/console/destinations"))
    page.get_by_label("New destination of kind").select_option("http")
    page.get_by_role("button", name="Create…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("New Webhook (HTTP) destination")
    page.get_by_label("Id", exact=True).fill("dst-team-webhook")
    page.get_by_label("Tenant", exact=True).fill("acme")
    page.get_by_label("Name", exact=True).fill("Team webhook")
    page.get_by_label(re.compile(r"^URL\b")).fill(console.receiver.url + "/absences")
    page.get_by_label("Departments").fill("d-sales, d-support")
    page.get_by_label("Signing secrets").fill(SIGNING_SECRET)
    page.get_by_label("Batch size").fill("20")
    page.get_by_role("button", name="Create destination").click()

    row = page.locator('tr[data-destination-id="dst-team-webhook"]')
    expect(row).to_contain_text("Team webhook")
    expect(row).to_contain_text("Enabled")
    with console.api("configure") as client:
        stored = client.get("/api/v1/destinations/dst-team-webhook").json()
    assert stored["filters"]["departments"] == ["d-sales", "d-support"]
    assert stored["settings"]["batch_size"] == 20, "the number field sends a number"
    assert stored["secrets"] == {"signing_secrets": "***"}
    assert SIGNING_SECRET not in page.content()

    # Edit: the secret field is empty (never shown); saving keeps the stored secret.
    row.get_by_role("link", name="Team webhook").click()
    expect(page.get_by_label("Name", exact=True)).to_have_value("Team webhook")
    expect(page.locator('[data-secret-state="signing_secrets"]')).to_have_text("(set)")
    expect(page.get_by_label("Signing secrets")).to_have_value("")
    expect(page.get_by_label("Batch size")).to_have_value("20")
    page.get_by_label("Name", exact=True).fill("Team calendar webhook")
    page.get_by_role("button", name="Save changes").click()
    expect(row).to_contain_text("Team calendar webhook")
    with console.api("configure") as client:
        stored = client.get("/api/v1/destinations/dst-team-webhook").json()
        audit = client.get("/api/v1/destinations/dst-team-webhook/audit").json()
    assert stored["name"] == "Team calendar webhook"
    assert stored["settings"]["batch_size"] == 20
    assert stored["secrets"] == {"signing_secrets": "***"}
    assert [entry["action"] for entry in audit] == ["update", "create"]
    assert "secrets" not in audit[0]["changes"]

    # The signed test call reaches the receiver (it refuses a bad signature with 401).
    row.get_by_role("button", name="Test connection").click()
    expect(page.locator("#test-result")).to_contain_text("Works")

    row.get_by_role("button", name="Disable").click()
    expect(row).to_contain_text("Disabled")
    row.get_by_role("button", name="Enable").click()
    expect(row).to_contain_text("Enabled")
    with console.api("configure") as client:
        assert client.get("/api/v1/destinations/dst-team-webhook").json()["enabled"] is True


def test_a_refused_form_says_why(console: Console, page: Page) -> None:
    sign_in(page, console, "configure")
    page.goto(console.url("/console/destinations/new?kind=http"))
    page.get_by_label("Id", exact=True).fill("dst-bad")
    page.get_by_label("Tenant", exact=True).fill("acme")
    page.get_by_label("Name", exact=True).fill("Bad one")
    page.get_by_label(re.compile(r"^URL\b")).fill("http://127.0.0.1:9/x")
    page.get_by_label("Other settings (JSON object)").fill("[1, 2]")
    page.get_by_role("button", name="Create destination").click()
    expect(page.locator("#form-state")).to_contain_text("Other settings must be a JSON object")
    with console.api("configure") as client:
        assert client.get("/api/v1/destinations/dst-bad").status_code == 404


def test_the_resync_dialog_backfills_from_a_date_with_legal_entity_and_department(
    console: Console, page: Page
) -> None:
    console.destination("dst-backfill", "Backfill target", "/backfill")
    sign_in(page, console, "configure")
    page.goto(console.url("/console/destinations"))
    row = page.locator('tr[data-destination-id="dst-backfill"]')
    expect(row).to_contain_text("Backfill target")

    # Cancel sends nothing.
    row.get_by_role("button", name="Resync").click()
    dialog = page.get_by_role("dialog", name="Resync Backfill target")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    with console.api("configure") as client:
        assert client.get("/api/v1/destinations/dst-backfill/resync").status_code == 404

    row.get_by_role("button", name="Resync").click()
    dialog.get_by_label("Absences ending on or after").fill("2026-05-06")
    dialog.get_by_label("Legal entity id").fill("le-fr")
    dialog.get_by_label("Department id").fill("dep-b")
    dialog.get_by_role("button", name="Start resync").click()
    expect(page.locator("#destinations-state")).to_contain_text("Resync of Backfill target complete")
    expect(page.locator("#destinations-state")).to_contain_text(
        re.compile(r"\d+ sent .* skipped, 0 failed in \d")
    )
    with console.api("configure") as client:
        job = client.get("/api/v1/destinations/dst-backfill/resync").json()
    assert job["reason"] == "operator" and job["completed"]
    assert job["parameters"] == {
        "ending_on_or_after": "2026-05-06",
        "legal_entity": "le-fr",
        "department": "dep-b",
        "changed_since": None,
    }
