"""The audit page in Chromium against the running service: a destination created and disabled by
an admin, a delivery retried by a viewer; the page lists them newest first, filters by operator and
by destination, and is not offered to the view right. The README's audit screenshot is taken here."""

from __future__ import annotations

import datetime as dt

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import SCREENSHOTS, Console, absence_change, sign_in
from tests.browser.test_follow_up import PEOPLE, settle

pytestmark = pytest.mark.browser

HR = "dst-hr-calendar"
HOOK = {
    "id": "dst-team-hook",
    "tenant": "acme",
    "name": "Team hook",
    "kind": "http",
    "settings": {"url": "http://127.0.0.1:9/hook"},
    "secrets": {"signing_secrets": "whsec_" + "c" * 32},
}


def test_audit_page_lists_filters_and_is_for_configure_only(console: Console, page: Page) -> None:
    console.destination(HR, "HR calendar webhook", "/absences")
    console.receiver.fail_next(1, 422, absence_id="abs-5101")
    refused = console.send(absence_change(HR, "abs-5101", PEOPLE["marta"], dt.date(2026, 3, 2), 2))
    settle(console, refused, "ERROR")
    with console.api("configure") as admin, console.api("view") as viewer:
        assert admin.post("/api/v1/destinations", json=HOOK).status_code == 201
        assert admin.post("/api/v1/destinations/dst-team-hook/disable").status_code == 200
        assert viewer.post(f"/api/v1/deliveries/{refused.delivery_id}/retry").status_code == 202

    sign_in(page, console, "view")
    expect(page.get_by_role("navigation", name="Main")).not_to_contain_text("Audit")
    assert page.goto(console.url("/console/audit")).status == 403  # type: ignore[union-attr]
    page.get_by_role("button", name="Sign out").click()

    sign_in(page, console, "configure")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit").click()
    rows = page.locator("#audit tbody tr[data-audit-id]")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_contain_text("Nina (support)")
    expect(rows.nth(0)).to_contain_text("retry")
    expect(rows.nth(0)).to_contain_text(refused.delivery_id)
    expect(rows.nth(1)).to_contain_text("disable")
    expect(rows.nth(1)).to_contain_text("Omar (admin)")
    expect(rows.nth(2)).to_contain_text("create")
    expect(page.locator("#audit")).not_to_contain_text("c" * 32)
    page.screenshot(path=str(SCREENSHOTS / "audit.png"), full_page=True)

    page.get_by_label("Operator").fill("nina")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**actor=nina**")
    expect(rows).to_have_count(1)
    expect(rows.nth(0)).to_contain_text("retry")

    page.goto(console.url("/console/audit?destination=dst-team-hook"))
    expect(page.get_by_label("Destination id")).to_have_value("dst-team-hook")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("disable")
    expect(rows.nth(1)).to_contain_text("create")
