"""Follow-up and detail pages against the running pipeline: a delivery appears live, its detail
shows the attempts, and Retry and Mark as processed change its status once the worker applied them.
The two README screenshots are taken here, from this real data."""

from __future__ import annotations

import datetime as dt

import pytest
from playwright.sync_api import Page, expect

from schemas.delivery import Delivery
from schemas.models import ChangeKind
from tests.browser.conftest import SCREENSHOTS, Console, absence_change, sign_in

pytestmark = pytest.mark.browser

HR = "dst-hr-calendar"
PAYROLL = "dst-payroll-sync"
PEOPLE = {
    "jane": ("Jane Doe", "jane.doe@acme.com"),
    "amir": ("Amir Haddad", "amir.haddad@acme.com"),
    "chloe": ("Chloé Martin", "chloe.martin@acme.com"),
    "kenji": ("Kenji Sato", "kenji.sato@acme.com"),
    "lena": ("Lena Fischer", "lena.fischer@acme.com"),
    "marta": ("Marta Silva", "marta.silva@acme.com"),
}


def settle(console: Console, delivery: Delivery, status: str) -> None:
    console.wait_api(
        "view",
        f"/api/v1/deliveries/{delivery.delivery_id}",
        lambda r: r.status_code == 200 and r.json()["status"] == status,
    )


def seed(console: Console) -> dict[str, Delivery]:
    """A realistic morning: successes on two destinations, one refused (Error), one throttled for an
    hour (Pending), and a change replaced by a newer one before it was sent (Superseded)."""
    console.destination(HR, "HR calendar webhook", "/absences")
    console.destination(PAYROLL, "Payroll sync", "/payroll")
    march = dt.date(2026, 3, 2)
    done = {
        "ok1": absence_change(HR, "abs-3101", PEOPLE["amir"], march, 5),
        "ok2": absence_change(PAYROLL, "abs-3101", PEOPLE["amir"], march, 5),
        "ok3": absence_change(HR, "abs-3102", PEOPLE["chloe"], march + dt.timedelta(days=14), 1),
        "ok4": absence_change(HR, "abs-3103", PEOPLE["lena"], march + dt.timedelta(days=30), 10),
    }
    for delivery in done.values():
        console.send(delivery)
    console.receiver.throttle_next(1, 3600, status=503, absence_id="abs-3104")
    pending = console.send(
        absence_change(PAYROLL, "abs-3104", PEOPLE["kenji"], march + dt.timedelta(days=7), 2)
    )
    console.receiver.fail_next(1, 422, absence_id="abs-3105")
    refused = console.send(absence_change(HR, "abs-3105", PEOPLE["marta"], march + dt.timedelta(days=21), 3))
    console.receiver.throttle_next(1, 3600, status=503, absence_id="abs-3106")
    old = console.send(absence_change(HR, "abs-3106", PEOPLE["lena"], march + dt.timedelta(days=3), 2))
    settle(console, old, "PENDING")
    newer = console.send(
        absence_change(HR, "abs-3106", PEOPLE["lena"], march + dt.timedelta(days=3), 3, ChangeKind.UPDATED, 2)
    )
    for delivery in done.values():
        settle(console, delivery, "SUCCESSFUL")
    settle(console, pending, "PENDING")
    settle(console, refused, "ERROR")
    settle(console, old, "SUPERSEDED")
    settle(console, newer, "SUCCESSFUL")
    return {"refused": refused, "pending": pending}


def test_follow_up_live_detail_retry_and_mark_as_processed(console: Console, page: Page) -> None:
    seeded = seed(console)
    sign_in(page, console, "view")
    expect(page.locator("#live-state")).to_contain_text("Live")
    expect(page.locator('[data-count="SUCCESSFUL"]')).to_have_text("5")
    expect(page.locator('[data-count="SUPERSEDED"]')).to_have_text("1")
    page.evaluate("window.notReloaded = true")

    # A new change arrives: the destination refuses it; the row appears and turns Error live.
    console.receiver.fail_next(1, 400, absence_id="abs-3200")
    new = console.send(absence_change(HR, "abs-3200", PEOPLE["jane"], dt.date(2026, 3, 9), 3))
    row = page.locator(f'tr[data-delivery-id="{new.delivery_id}"]')
    expect(row).to_contain_text("Jane Doe")
    expect(row.locator(".badge")).to_have_text("Error")
    expect(page.locator('[data-count="ERROR"]')).to_have_text("2")
    assert page.evaluate("window.notReloaded") is True, "the page was reloaded"
    page.mouse.move(0, 0)
    page.screenshot(path=str(SCREENSHOTS / "follow-up.png"))

    # Its detail: the absence, the destination, the attempt with request and response.
    row.get_by_role("link", name="Jane Doe").click()
    expect(page.locator("#delivery-title")).to_contain_text("Jane Doe")
    expect(page.locator("#delivery")).to_contain_text(HR)
    attempt = page.locator("details.attempt").first
    expect(attempt).to_contain_text("Attempt 1")
    expect(attempt).to_contain_text("HTTP 400")
    request_body = attempt.locator("section").first.locator("pre.code").first
    expect(request_body).to_contain_text('\n  "absence": {')  # the JSON payload, indented
    page.screenshot(path=str(SCREENSHOTS / "delivery-detail.png"))
    attempt.get_by_text("Headers").first.click()
    expect(attempt.locator("pre.headers").first).to_contain_text("webhook-signature: ***")

    # Retry (confirmed): the worker sends again, the receiver accepts, the page shows Successful.
    page.get_by_role("button", name="Retry").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Send this absence")
    dialog.get_by_role("button", name="Retry").click()
    expect(page.locator("#command-state")).to_contain_text("Retry applied")
    expect(page.locator("#delivery-title .badge")).to_have_text("Successful")
    expect(page.locator("details.attempt")).to_have_count(2)
    expect(page.get_by_role("button", name="Mark as processed")).to_be_hidden()

    # Mark as processed on the refused one: cancelled first, then confirmed.
    page.goto(console.url(f"/console/deliveries/{seeded['refused'].delivery_id}"))
    expect(page.locator("#delivery-title .badge")).to_have_text("Error")
    page.get_by_role("button", name="Mark as processed").focus()  # by keyboard: Enter opens, Escape cancels
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_contain_text("no more attempts")
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_be_hidden()
    expect(page.locator("#command-state")).to_be_hidden()
    page.get_by_role("button", name="Mark as processed").click()
    page.get_by_role("dialog").get_by_role("button", name="Mark as processed").click()
    expect(page.locator("#command-state")).to_contain_text("Mark as processed applied")
    expect(page.locator("#delivery-title .badge")).to_have_text("Successful (by hand)")


def test_filters_and_next_page(console: Console, page: Page) -> None:
    console.destination(HR, "HR calendar webhook", "/absences")
    sent = [
        console.send(absence_change(HR, f"abs-41{n:02d}", PEOPLE["amir"], dt.date(2026, 4, 1 + n)))
        for n in range(3)
    ]
    jane = console.send(absence_change(HR, "abs-4200", PEOPLE["jane"], dt.date(2026, 5, 4)))
    for delivery in [*sent, jane]:
        settle(console, delivery, "SUCCESSFUL")
    sign_in(page, console, "view")

    page.get_by_label("Employee").fill("jane")
    page.get_by_role("button", name="Apply").click()
    rows = page.locator("#deliveries tbody tr[data-delivery-id]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Jane Doe")

    page.goto(console.url("/console/deliveries?date_from=2026-04-01&date_to=2026-04-30"))
    expect(rows).to_have_count(3)
    expect(page.get_by_label("Absence from")).to_have_value("2026-04-01")

    # Pagination (50 a page unless the address says otherwise): "Next page" follows the API's cursor.
    page.goto(console.url("/console/deliveries?status=SUCCESSFUL&limit=3"))
    expect(rows).to_have_count(3)
    first = set(rows.evaluate_all("rows => rows.map(r => r.dataset.deliveryId)"))
    page.get_by_role("button", name="Next page").click()
    expect(rows).to_have_count(1)
    second = set(rows.evaluate_all("rows => rows.map(r => r.dataset.deliveryId)"))
    assert first | second == {d.delivery_id for d in [*sent, jane]}
    expect(page.get_by_role("button", name="Next page")).to_be_hidden()
    page.get_by_role("link", name="First page").click()
    expect(rows).to_have_count(3)
