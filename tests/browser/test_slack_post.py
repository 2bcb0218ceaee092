"""A Slack daily post in the console's follow-up, from the running pipeline: the Slack scheduler posts
against the Slack fake, the first attempt refused (``ok: false`` at HTTP 200), the retry made; the
detail shows both attempts with the message sent and Slack's answer, and Retry updates the post."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from schemas.delivery import slack_post_delivery_id
from tests.browser.conftest import SCREENSHOTS, Console, sign_in
from tests.connectors.test_slack import CHANNEL, MONDAY, Worker, add_slack_destination, the_week
from tests.fakes.slack import FakeSlack
from tests.streams_helpers import produce_events

pytestmark = pytest.mark.browser

POST_ID = slack_post_delivery_id("dst-slack", CHANNEL, MONDAY.isoformat())


def test_a_slack_post_is_followed_with_its_attempts_and_retried(console: Console, page: Page) -> None:
    with FakeSlack() as slack:
        slack.add_channel(CHANNEL, "hr-absences")
        slack.fail("chat.postMessage", "internal_error")
        add_slack_destination(console.settings, slack, channel_name="#hr-absences")
        produce_events(console.settings, the_week())
        worker = Worker(console.settings)
        try:
            console.wait_api(
                "view",
                f"/api/v1/deliveries/{POST_ID}",
                lambda r: r.status_code == 200 and r.json()["status"] == "SUCCESSFUL",
            )
            sign_in(page, console, "view")
            row = page.locator(f'tr[data-delivery-id="{POST_ID}"]')
            expect(row).to_contain_text("Slack daily post in #hr-absences")
            expect(row.locator(".badge")).to_have_text("Successful")

            row.get_by_role("link", name="Slack daily post in #hr-absences").click()
            expect(page.locator("#delivery")).to_contain_text("dst-slack")
            attempts = page.locator("details.attempt")
            expect(attempts).to_have_count(2)
            first = attempts.filter(has_text="Attempt 1")  # the newest attempt is shown first
            expect(first).to_contain_text("answered 200 internal_error")  # not shown as OK
            page.mouse.move(0, 0)
            page.screenshot(path=str(SCREENSHOTS / "slack-post.png"))
            expect(first).to_contain_text("internal_error")  # Slack's answer, HTTP 200 ok:false
            expect(first).to_contain_text("Absent today")  # the message sent (who is in it depends on
            # how far the day projection had read when attempt 1 went out)
            first.locator("summary").first.click()  # only the newest attempt is open
            first.get_by_text("Headers").first.click()
            expect(first.locator("pre.headers").first).to_contain_text("Authorization: ***")
            expect(page.locator("body")).not_to_contain_text(slack.token)

            page.get_by_role("button", name="Retry").click()
            page.get_by_role("dialog").get_by_role("button", name="Retry").click()
            expect(page.locator("#command-state")).to_contain_text("Retry applied")
            expect(attempts).to_have_count(3)
            expect(attempts.filter(has_text="Attempt 3")).to_contain_text("chat.update")
        finally:
            worker.stop()
        assert slack.count("chat.postMessage") == 1 and slack.count("chat.update") == 1
