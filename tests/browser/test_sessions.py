"""Console sessions and ``/docs`` in real Chromium (issue 12 item 7).

- Login CSRF: a page of another origin (a loopback server on another port, reached as
  ``localhost``) posts a sign-in form with the attacker's token to the console: refused, and the
  browser holds no session.
- Sign-out ends the session on the server: the cookie saved before signing out, put back into a
  fresh browser, opens nothing.
- ``/docs`` renders Swagger UI with every request going to absync itself (no CDN).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import Browser, Page, Request, Route

from absync.web.console.session import COOKIE
from tests.browser.conftest import VIEWPORT, Console, sign_in


class _AttackerPage(BaseHTTPRequestHandler):
    target = ""
    token = ""

    def do_GET(self) -> None:
        page = (
            "<!doctype html><html><body>"
            f'<form id="f" method="post" action="{self.target}/console/session">'
            f'<input type="hidden" name="token" value="{self.token}">'
            '<input type="hidden" name="next" value="/console/deliveries"></form>'
            "<script>document.getElementById('f').submit()</script></body></html>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def attacker(console: Console) -> Iterator[str]:
    """The attacker's site: another origin, whose page signs the visitor in with its own token."""
    handler = type("Handler", (_AttackerPage,), {"target": console.base_url, "token": console.tokens["view"]})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        thread.join(10)


def _session_cookies(page: Page) -> list[str]:
    return [c["name"] for c in page.context.cookies() if c["name"] == COOKIE]


def test_a_sign_in_form_of_another_origin_is_refused(page: Page, console: Console, attacker: str) -> None:
    with page.expect_response(lambda r: r.url.endswith("/console/session")) as answer:
        page.goto(attacker)
    assert answer.value.status == 403
    assert "cross-origin request refused" in page.content()
    assert _session_cookies(page) == []
    page.goto(console.url("/console/deliveries"))
    assert page.url.startswith(console.url("/console/sign-in"))  # not signed in as the attacker


def test_sign_out_ends_the_session_everywhere(page: Page, browser: Browser, console: Console) -> None:
    sign_in(page, console, "configure")
    saved = [c for c in page.context.cookies() if c["name"] == COOKIE]
    assert len(saved) == 1 and saved[0]["secure"] and saved[0]["httpOnly"]
    page.get_by_role("button", name="Sign out").click()
    # The sign-in page; with ?next= when the live page's stream saw the session end first and sent it
    # there (the same race as tests/browser/test_rights.py; the 23:09 fresh-clone run lost it).
    page.wait_for_url(re.compile(re.escape(console.url("/console/sign-in")) + r"(\?next=.*)?$"))
    assert _session_cookies(page) == []
    elsewhere = browser.new_context(viewport=VIEWPORT)
    try:
        elsewhere.add_cookies(saved)  # type: ignore[arg-type]  # the cookie as it was before sign-out
        copy = elsewhere.new_page()
        copy.goto(console.url("/console/deliveries"))
        assert copy.url.startswith(console.url("/console/sign-in"))
    finally:
        elsewhere.close()


def test_docs_render_from_local_files_only(page: Page, console: Console) -> None:
    outside: list[str] = []

    def only_absync(route: Route, request: Request) -> None:
        if request.url.startswith(console.base_url):
            route.continue_()
        else:
            outside.append(request.url)
            route.abort()

    page.route("**/*", only_absync)
    page.goto(console.url("/docs"))
    page.locator(".swagger-ui .info .title").filter(has_text="absync operator API").wait_for()
    page.locator(".opblock-summary-path").first.wait_for()
    assert page.locator(".opblock").count() >= 15
    assert outside == []
