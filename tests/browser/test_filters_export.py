"""Follow-up filters (trigger, destination kind, legal entity, tenant) and the CSV export, in Chromium, against
the running pipeline: a refused delivery retried by an operator shows under trigger "Retry", and the
export link downloads exactly the filtered rows."""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Console, absence_change, sign_in
from tests.browser.test_follow_up import PEOPLE, settle

pytestmark = pytest.mark.browser

HR = "dst-hr-calendar"


def test_filter_by_trigger_kind_and_tenant_then_export_csv(console: Console, page: Page) -> None:
    console.destination(HR, "HR calendar webhook", "/absences")
    march = dt.date(2026, 3, 2)
    fine = console.send(absence_change(HR, "abs-4101", PEOPLE["amir"], march, 2))
    console.receiver.fail_next(1, 422, absence_id="abs-4102")
    refused = console.send(absence_change(HR, "abs-4102", PEOPLE["marta"], march, 3))
    settle(console, fine, "SUCCESSFUL")
    settle(console, refused, "ERROR")
    with console.api("view") as client:
        assert client.post(f"/api/v1/deliveries/{refused.delivery_id}/retry").status_code == 202
    console.wait_api(
        "view",
        f"/api/v1/deliveries/{refused.delivery_id}",
        lambda r: r.json()["trigger"] == "retry" and r.json()["status"] == "SUCCESSFUL",
    )

    sign_in(page, console, "view")
    rows = page.locator("#deliveries tbody tr[data-delivery-id]")
    expect(rows).to_have_count(2)
    page.get_by_label("Trigger").select_option("retry")
    page.get_by_label("Destination kind").select_option("http")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**trigger=retry**")
    expect(rows).to_have_count(1)
    expect(page.locator(f'tr[data-delivery-id="{refused.delivery_id}"]')).to_contain_text("Marta Silva")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export CSV").click()
    download = download_info.value
    table = list(csv.reader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))
    assert table[0][0] == "delivery_id"
    assert [r[0] for r in table[1:]] == [refused.delivery_id]
    assert table[1][table[0].index("trigger")] == "retry"

    page.get_by_label("Trigger").select_option("automatic")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**trigger=automatic**")
    expect(page.locator(f'tr[data-delivery-id="{fine.delivery_id}"]')).to_be_visible()
    expect(rows).to_have_count(1)

    page.get_by_label("Destination kind").select_option("google")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**kind=google**")
    expect(page.locator("#deliveries tbody")).to_contain_text("No delivery matches these filters.")

    page.goto(console.url("/console/deliveries"))
    page.get_by_label("Legal entity").fill("le-1")  # the entity of every employee sent here
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**legal_entity=le-1**")
    expect(rows).to_have_count(2)
    page.get_by_label("Legal entity").fill("le-2")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**legal_entity=le-2**")
    expect(page.locator("#deliveries tbody")).to_contain_text("No delivery matches these filters.")

    page.goto(console.url("/console/deliveries?tenant=someone-else"))
    expect(page.get_by_label("Tenant")).to_have_value("someone-else")
    expect(page.locator("#deliveries tbody")).to_contain_text("No delivery matches these filters.")
