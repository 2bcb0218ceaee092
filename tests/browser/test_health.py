"""Destination health and the created item's id, in Chromium, against the running pipeline.

- A delivery's detail shows the id of the item the destination created (here the receiver's resource
  URL, as the http connector in ``rest`` mode reports it).
- The alert settings are set on the Alerts page (secrets write-only); a destination whose receiver
  keeps failing shows as failing, and once the health component's clock is five days ahead it is
  disabled automatically: the destination page says so, with its health history and audit entry, and
  the Slack channel (the fake) was told. Screenshots for the README: destination-health.png, alerts.png.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import threading
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from absync.health.monitor import HealthMonitor
from tests.browser.conftest import SCREENSHOTS, Console, absence_change, sign_in
from tests.fakes.slack import FakeSlack

pytestmark = pytest.mark.browser

JANE = ("Jane Doe", "jane.doe@acme.com")


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        fake.add_channel("C0ALERTS", "absync-alerts")
        yield fake


def test_the_created_item_id_is_in_the_delivery_detail(console: Console, page: Page) -> None:
    console.destination("dst-hr", "HR calendar webhook", "/absences")
    delivery = console.send(absence_change("dst-hr", "abs-4101", JANE, dt.date(2026, 4, 6), 3))
    console.wait_api(
        "view",
        f"/api/v1/deliveries/{delivery.delivery_id}",
        lambda r: r.status_code == 200 and r.json()["status"] == "SUCCESSFUL",
    )
    sign_in(page, console, "view")
    page.goto(console.url(f"/console/deliveries/{delivery.delivery_id}"))
    expect(page.locator("#external-id")).to_have_text(console.receiver.url + "/absences/abs-4101")


def test_alerts_settings_failing_destination_and_auto_disable(
    console: Console, page: Page, slack: FakeSlack
) -> None:
    sign_in(page, console, "configure")
    page.get_by_role("link", name="Alerts").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Alerts")
    expect(page.locator("#alerts-updated")).to_have_text("Not set yet.")  # loaded: the form is ready
    page.get_by_label("Channel").fill("C0ALERTS")
    page.get_by_label(re.compile(r"^Bot token")).fill(slack.token)
    page.get_by_label("Slack API address").fill(slack.api_url())
    page.get_by_role("button", name="Save alert settings").click()
    expect(page.locator("#alerts-state")).to_have_text("Alert settings saved.")
    expect(page.locator("#a-slack-token-state")).to_have_text("(set)")
    expect(page.get_by_label(re.compile(r"^Bot token"))).to_have_value("")
    assert slack.token not in page.content()
    page.screenshot(path=str(SCREENSHOTS / "alerts.png"))
    with console.api("configure") as client:
        stored = client.get("/api/v1/alerts").json()
    assert (stored["slack_channel"], stored["slack_token_set"], stored["updated_by"]) == (
        "C0ALERTS",
        True,
        "Omar (admin)",
    )

    console.destination("dst-payroll", "Payroll sync", "/payroll")
    console.receiver.fail_next(1000, 503, absence_id="abs-4201")
    console.send(absence_change("dst-payroll", "abs-4201", JANE, dt.date(2026, 4, 13), 2))
    health = console.wait_api(
        "configure",
        "/api/v1/destinations/dst-payroll/health",
        lambda r: r.status_code == 200 and r.json()["state"] == "failing",
    ).json()
    failing_since = dt.datetime.fromisoformat(health["failing_since"])

    page.goto(console.url("/console/destinations/dst-payroll?kind=http"))
    expect(page.locator("#health-state")).to_have_text("Failing")

    clock = [failing_since + dt.timedelta(days=5, minutes=1)]
    monitor = HealthMonitor(console.settings, engine=console.engine, clock=lambda: clock[0])
    monitor.destinations.start()
    try:
        monitor.destinations.wait_ready()
        # Playwright's sync API runs a loop in this thread: the tick runs in a thread of its own.
        ticking = threading.Thread(target=asyncio.run, args=(monitor.tick(),))
        ticking.start()
        ticking.join(120)
        assert not ticking.is_alive()
    finally:
        monitor.destinations.close()

    page.reload()
    expect(page.locator("#health-state")).to_have_text("Disabled")
    expect(page.locator("#auto-disabled")).to_contain_text("Disabled automatically")
    expect(page.locator('#health-events li[data-event="disabled"]')).to_contain_text("alert sent")
    expect(page.locator('#health-events li[data-event="failing"]')).to_contain_text("is failing since")
    expect(page.locator("#audit")).to_contain_text("absync:auto-disable · auto-disable")
    expect(page.get_by_label("Enabled", exact=True)).not_to_be_checked()
    page.locator("#health").scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "destination-health.png"), full_page=True)
    texts = [m["text"] for m in slack.messages("C0ALERTS")]
    assert len(texts) == 2 and "Payroll sync" in texts[0] and "disabled automatically" in texts[1]
