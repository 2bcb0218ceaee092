"""Bulk actions from the follow-up page, in Chromium, against the running pipeline: the page's
filters select the deliveries, the confirmation shows their count, the job's result is shown and
the rows turn Successful as the worker re-sends them. The README's screenshot of the confirmation
is taken here."""

from __future__ import annotations

import datetime as dt

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import SCREENSHOTS, Console, absence_change, sign_in
from tests.browser.test_follow_up import PEOPLE, settle

pytestmark = pytest.mark.browser

HR = "dst-hr-bulk"
PAYROLL = "dst-payroll-bulk"


def test_retry_all_on_the_filtered_list(console: Console, page: Page) -> None:
    console.destination(HR, "HR calendar webhook", "/absences")
    console.destination(PAYROLL, "Payroll sync", "/payroll")
    march = dt.date(2026, 3, 2)
    for absence in ("abs-5101", "abs-5102", "abs-5104"):
        console.receiver.fail_next(1, 400, absence_id=absence)  # refused once: Error, then healed
    failed = [
        console.send(absence_change(HR, "abs-5101", PEOPLE["jane"], march, 2)),
        console.send(absence_change(HR, "abs-5102", PEOPLE["amir"], march + dt.timedelta(days=7), 1)),
    ]
    fine = console.send(absence_change(HR, "abs-5103", PEOPLE["lena"], march, 3))
    elsewhere = console.send(absence_change(PAYROLL, "abs-5104", PEOPLE["kenji"], march, 1))
    for delivery in (*failed, elsewhere):
        settle(console, delivery, "ERROR")
    settle(console, fine, "SUCCESSFUL")

    sign_in(page, console, "view")
    page.get_by_label("Destination id").fill(HR)
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(f"**destination={HR}**")
    rows = page.locator("#deliveries tbody tr[data-delivery-id]")
    expect(rows).to_have_count(3)

    page.get_by_role("button", name="Retry all").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Retry all")
    expect(page.locator("#bulk-count")).to_have_text("3 deliveries")
    expect(dialog).to_contain_text("Error 2, Successful 1; 1 destination")
    expect(dialog).to_contain_text(f"Destination id: {HR}")
    page.screenshot(path=str(SCREENSHOTS / "bulk-confirm.png"))
    dialog.get_by_role("button", name="Retry 3 deliveries").click()

    state = page.locator("#bulk-state")
    expect(state).to_contain_text("Retry all done: 3 of 3 deliveries sent again.")
    for delivery in failed:
        expect(page.locator(f'tr[data-delivery-id="{delivery.delivery_id}"]')).to_have_attribute(
            "data-status", "SUCCESSFUL"
        )
    expect(rows).to_have_count(3)

    with console.api("configure") as client:
        job = client.get("/api/v1/deliveries/bulk").json()
        audit = client.get("/api/v1/audit", params={"destination": HR}).json()["items"]
        other = client.get(f"/api/v1/deliveries/{elsewhere.delivery_id}").json()
    assert (job["action"], job["done"], job["total"], job["started_by"]) == ("retry", 3, 3, "Nina (support)")
    assert [
        (a["action"], a["actor"], a["changes"]["count"]) for a in audit if a["action"] == "bulk-retry"
    ] == [("bulk-retry", "Nina (support)", 3)]
    assert other["status"] == "ERROR"  # not selected by the filters: left as it was
