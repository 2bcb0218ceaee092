"""Recover from the console: a destination's deliveries in Error are re-sent from its row, the
progress and the result (re-sent, skipped) shown, and the deliveries then succeed as retries. The
README's screenshot of the Recover dialog is taken here."""

from __future__ import annotations

import datetime as dt

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import SCREENSHOTS, WAIT_MS, Console, absence_change, sign_in

pytestmark = pytest.mark.browser

HR = "dst-hr-recover"


def test_recover_from_the_console_resends_the_failed_deliveries(console: Console, page: Page) -> None:
    console.destination(HR, "HR calendar webhook", "/absences")
    march = dt.date(2026, 3, 2)
    people = [("Jane Doe", "jane.doe@acme.com"), ("Amir Haddad", "amir.haddad@acme.com")]
    for absence in ("abs-4101", "abs-4102"):
        console.receiver.fail_next(1, 400, absence_id=absence)  # refused once: Error, then healed
    failed = [
        console.send(absence_change(HR, f"abs-410{i + 1}", person, march, 2))
        for i, person in enumerate(people)
    ]
    ok = console.send(absence_change(HR, "abs-4103", ("Lena Fischer", "lena.fischer@acme.com"), march, 1))
    for delivery, status in ((failed[0], "ERROR"), (failed[1], "ERROR"), (ok, "SUCCESSFUL")):
        console.wait_api(
            "view",
            f"/api/v1/deliveries/{delivery.delivery_id}",
            lambda r, s=status: r.status_code == 200 and r.json()["status"] == s,
        )

    sign_in(page, console, "configure")
    page.goto(console.url("/console/destinations"))
    row = page.locator(f'tr[data-destination-id="{HR}"]')
    row.get_by_role("button", name="Recover").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Recover HR calendar webhook")
    expect(page.get_by_label("In Error since (your local time)")).not_to_have_value("")
    page.screenshot(path=str(SCREENSHOTS / "recover.png"))
    dialog.get_by_role("button", name="Recover").click()
    state = page.locator("#destinations-state")
    expect(state).to_contain_text(
        "Recover of HR calendar webhook done: 2 of 2 in Error since", timeout=WAIT_MS
    )
    expect(state).to_contain_text("re-sent.")

    for delivery in failed:
        console.wait_api(
            "view",
            f"/api/v1/deliveries/{delivery.delivery_id}",
            lambda r: (
                r.status_code == 200 and r.json()["status"] == "SUCCESSFUL" and r.json()["trigger"] == "retry"
            ),
        )
    with console.api("configure") as client:
        job = client.get(f"/api/v1/destinations/{HR}/recover").json()
        audit = client.get(f"/api/v1/destinations/{HR}/audit").json()
    assert (job["done"], job["total"], job["skipped"], job["started_by"]) == (2, 2, {}, "Omar (admin)")
    assert [(a["action"], a["actor"]) for a in audit if a["action"] == "recover"] == [
        ("recover", "Omar (admin)")
    ]
