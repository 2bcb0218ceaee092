"""Sign-in with each right: what the console shows, and what the server refuses anyway."""

from __future__ import annotations

import datetime as dt
import re

import httpx
import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect

from absync.web.auth import list_tokens, revoke_token
from tests.browser.conftest import Console, absence_change, sign_in

pytestmark = pytest.mark.browser


def test_a_bad_token_is_refused(console: Console, page: Page) -> None:
    # The open page's live stream may see the revoked token first and send the page to sign-in
    # itself: our navigation is then interrupted by that one, which lands in the same place.
    try:
        page.goto(console.url("/console/deliveries"))
    except PlaywrightError as exc:
        if "interrupted by another navigation" not in str(exc):
            raise
    next_page = re.escape(console.url("/console/sign-in?next=")) + r"(/|%2F)console(/|%2F)deliveries$"
    expect(page).to_have_url(re.compile(next_page))
    page.get_by_label("API token").fill("absync_not-a-real-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    response = page.request.get(console.url("/console/api/deliveries"))
    assert response.status == 401


def test_view_right_sees_deliveries_but_not_destinations(console: Console, page: Page) -> None:
    console.destination("dst-hr-calendar", "HR calendar webhook", "/absences")
    delivery = console.send(
        absence_change("dst-hr-calendar", "abs-1001", ("Jane Doe", "jane@acme.com"), dt.date(2026, 3, 3))
    )
    console.wait_api("view", f"/api/v1/deliveries/{delivery.delivery_id}", lambda r: r.status_code == 200)

    sign_in(page, console, "view")
    expect(page.get_by_test_id("right")).to_have_text("view")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Deliveries")).to_be_visible()
    expect(nav.get_by_role("link", name="Destinations")).to_have_count(0)
    expect(page.locator(f'tr[data-delivery-id="{delivery.delivery_id}"]')).to_contain_text("Jane Doe")

    page.goto(console.url(f"/console/deliveries/{delivery.delivery_id}"))
    expect(page.get_by_role("button", name="Retry")).to_be_visible()  # view may retry

    response = page.goto(console.url("/console/destinations"))
    assert response is not None and response.status == 403
    expect(page.get_by_role("alert")).to_contain_text("needs the configure right")
    for path in ("/console/destinations/new?kind=http", "/console/destinations/dst-hr-calendar"):
        assert page.request.get(console.url(path)).status == 403
    api = page.request.get(console.url("/console/api/destinations"))
    assert api.status == 403  # the session's token, checked by the API itself
    write = page.request.post(
        console.url("/console/api/destinations/dst-hr-calendar/disable"), headers={"X-Absync-Console": "1"}
    )
    assert write.status == 403
    with httpx.Client(base_url=console.base_url) as client:
        bearer = client.get(
            "/api/v1/destinations", headers={"Authorization": f"Bearer {console.tokens['view']}"}
        )
    assert bearer.status_code == 403


def test_configure_right_sees_destinations_with_health(console: Console, page: Page) -> None:
    console.destination("dst-hr-calendar", "HR calendar webhook", "/absences")
    console.receiver.fail_next(1, 400, absence_id="abs-2001")
    delivery = console.send(
        absence_change("dst-hr-calendar", "abs-2001", ("Jane Doe", "jane@acme.com"), dt.date(2026, 3, 3))
    )
    console.wait_api(
        "configure",
        f"/api/v1/deliveries/{delivery.delivery_id}",
        lambda r: r.status_code == 200 and r.json()["status"] == "ERROR",
    )

    sign_in(page, console, "configure")
    expect(page.get_by_test_id("right")).to_have_text("configure")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Destinations").click()
    row = page.locator('tr[data-destination-id="dst-hr-calendar"]')
    expect(row).to_contain_text("HR calendar webhook")
    expect(row).to_contain_text("Enabled")
    expect(row).to_contain_text("0.0 %")
    expect(row).to_contain_text("answered 400")


def test_a_cross_site_write_without_the_console_header_is_refused(console: Console, page: Page) -> None:
    console.destination("dst-hr-calendar", "HR calendar webhook", "/absences")
    sign_in(page, console, "configure")
    refused = page.request.post(console.url("/console/api/destinations/dst-hr-calendar/disable"))
    assert refused.status == 403
    with console.api("configure") as client:
        assert client.get("/api/v1/destinations/dst-hr-calendar").json()["enabled"] is True


def test_signing_out_or_revoking_the_token_ends_the_session(console: Console, page: Page) -> None:
    sign_in(page, console, "view")
    page.get_by_role("button", name="Sign out").click()
    # The sign-in page; with ?next= when the live page's stream saw the session end first and sent it.
    expect(page).to_have_url(re.compile(re.escape(console.url("/console/sign-in")) + r"(\?next=.*)?$"))
    assert page.request.get(console.url("/console/api/me")).status == 401

    sign_in(page, console, "view")
    assert page.request.get(console.url("/console/api/me")).json()["right"] == "view"
    token_id = next(t.id for t in list_tokens(console.engine) if t.name == "Nina (support)")
    assert revoke_token(console.engine, token_id)
    assert page.request.get(console.url("/console/api/me")).status == 401
    # The open page's live stream may see the revoked token first and send the page to sign-in
    # itself: our navigation is then interrupted by that one, which lands in the same place.
    try:
        page.goto(console.url("/console/deliveries"))
    except PlaywrightError as exc:
        if "interrupted by another navigation" not in str(exc):
            raise
    next_page = re.escape(console.url("/console/sign-in?next=")) + r"(/|%2F)console(/|%2F)deliveries$"
    expect(page).to_have_url(re.compile(next_page))
