"""The rate limit in the console's destination form (issue 16 item 6): set when creating, shown and
changed when editing, emptied to lift it; the API says what was stored."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Console, sign_in
from tests.delivery.harness import SIGNING_SECRET

pytestmark = pytest.mark.browser


def stored_limit(console: Console, destination_id: str) -> object:
    with console.api("configure") as client:
        return client.get(f"/api/v1/destinations/{destination_id}").json()["rate_limit"]


def test_the_rate_limit_is_set_changed_and_lifted_in_the_form(console: Console, page: Page) -> None:
    sign_in(page, console, "configure")
    page.goto(console.url("/console/destinations/new?kind=http"))
    page.get_by_label("Id", exact=True).fill("dst-limited")
    page.get_by_label("Tenant", exact=True).fill("acme")
    page.get_by_label("Name", exact=True).fill("Small receiver")
    page.get_by_label(re.compile(r"^URL\b")).fill(console.receiver.url + "/absences")
    page.get_by_label("Signing secrets").fill(SIGNING_SECRET)
    page.get_by_label("Rate limit (requests per second)").fill("2.5")
    page.get_by_role("button", name="Create destination").click()
    row = page.locator('tr[data-destination-id="dst-limited"]')
    expect(row).to_contain_text("Small receiver")
    assert stored_limit(console, "dst-limited") == 2.5

    row.get_by_role("link", name="Small receiver").click()
    limit = page.get_by_label("Rate limit (requests per second)")
    expect(limit).to_have_value("2.5")
    limit.fill("0.5")
    page.get_by_role("button", name="Save changes").click()
    expect(row).to_be_visible()
    assert stored_limit(console, "dst-limited") == 0.5

    row.get_by_role("link", name="Small receiver").click()
    expect(limit).to_have_value("0.5")
    limit.fill("")  # empty: no limit
    page.get_by_role("button", name="Save changes").click()
    expect(row).to_be_visible()
    assert stored_limit(console, "dst-limited") is None
    with console.api("configure") as client:
        audit = client.get("/api/v1/destinations/dst-limited/audit").json()
    assert [e["changes"]["rate_limit"] for e in audit if e["action"] == "update"] == [
        {"from": 0.5, "to": None},
        {"from": 2.5, "to": 0.5},
    ]
