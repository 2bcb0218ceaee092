"""Console sign-in and sign-out at the HTTP level (issue 12 item 7): no login CSRF from another
origin, a ``__Host-`` Secure cookie outside development, and sign-out that ends the session on the
server. (tests/browser/test_sessions.py plays the cross-origin form in Chromium.)"""

from __future__ import annotations

from http.cookies import SimpleCookie

import httpx
from sqlalchemy.engine import Engine

from absync.web.auth import Right, create_token
from absync.web.console.session import COOKIE, DEV_COOKIE
from projections.db import migrate
from streams.settings import Settings
from tests.web.conftest import Api, serve

BRIDGE_WRITE = {"x-absync-console": "1"}


def _sign_in(base_url: str, token: str, **headers: str) -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        return client.post("/console/session", data={"token": token}, headers=headers)


def _cookie(response: httpx.Response) -> tuple[str, str, dict[str, str | bool]]:
    jar = SimpleCookie()
    jar.load(response.headers["set-cookie"])
    ((name, morsel),) = jar.items()
    attributes: dict[str, str | bool] = {k: v for k, v in morsel.items() if v}
    return name, morsel.value, attributes


def test_sign_in_from_another_origin_is_refused(api: Api) -> None:
    origin = api.base_url
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": origin.replace("127.0.0.1", "localhost")},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ):
        refused = _sign_in(api.base_url, api.tokens["view"], **headers)
        assert refused.status_code == 403, headers
        assert "set-cookie" not in refused.headers, headers
    for headers in ({"Origin": origin}, {"Sec-Fetch-Site": "same-origin"}, {}):
        accepted = _sign_in(api.base_url, api.tokens["view"], **headers)
        assert accepted.status_code == 303 and "set-cookie" in accepted.headers, headers


def test_the_cookie_is_secure_with_the_host_prefix_outside_development(api: Api) -> None:
    name, _, attributes = _cookie(_sign_in(api.base_url, api.tokens["view"], Origin=api.base_url))
    assert name == COOKIE == "__Host-absync_session"
    assert attributes["secure"] is True and attributes["httponly"] is True
    assert attributes["path"] == "/" and "domain" not in attributes
    assert str(attributes["samesite"]).lower() == "strict"


def test_development_keeps_a_plain_cookie_for_http(settings: Settings, engine: Engine) -> None:
    migrate(engine)
    token = create_token(engine, "dev", Right.VIEW)
    with serve(settings.model_copy(update={"env": "development"}), engine) as (base_url, _):
        name, _, attributes = _cookie(_sign_in(base_url, token, Origin=base_url))
    assert name == DEV_COOKIE and "secure" not in attributes and attributes["httponly"] is True


def test_sign_out_ends_the_session_on_the_server(api: Api) -> None:
    signed_in = _sign_in(api.base_url, api.tokens["configure"], Origin=api.base_url)
    _, value, _ = _cookie(signed_in)
    stolen = {COOKIE: value}  # a copy of the cookie, as a thief or a shared computer keeps it
    with httpx.Client(base_url=api.base_url, cookies=stolen, timeout=30) as browser:
        assert browser.get("/console/api/me").json()["name"] == "admin"
        cross = browser.post("/console/sign-out", headers={"Origin": "http://evil.example"})
        assert cross.status_code == 403  # a cross-site page cannot sign the operator out either
        assert browser.get("/console/api/me").status_code == 200
        out = browser.post("/console/sign-out", headers={"Origin": api.base_url})
        assert out.status_code == 303
        assert f"{COOKIE}=" in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]
    with httpx.Client(base_url=api.base_url, cookies=stolen, timeout=30) as thief:
        assert thief.get("/console/api/me").status_code == 401
        assert thief.get("/console/deliveries").status_code == 303  # to sign-in
    with api.client("configure") as client:  # the token itself is not revoked by signing out
        assert client.get("/api/v1/me").status_code == 200


def test_bridge_writes_from_another_origin_are_refused(api: Api) -> None:
    _, value, _ = _cookie(_sign_in(api.base_url, api.tokens["configure"], Origin=api.base_url))
    with httpx.Client(base_url=api.base_url, cookies={COOKIE: value}, timeout=30) as browser:
        cross = browser.post(
            "/console/api/destinations",
            json={"id": "dst-x", "tenant": "acme", "name": "x", "kind": "http"},
            headers={**BRIDGE_WRITE, "Origin": "http://evil.example"},
        )
        assert cross.status_code == 403 and cross.json() == {"detail": "cross-origin request refused"}
        same = browser.post(
            "/console/api/destinations",
            json={
                "id": "dst-x",
                "tenant": "acme",
                "name": "x",
                "kind": "http",
                "settings": {"url": "http://127.0.0.1:9/"},
            },
            headers={**BRIDGE_WRITE, "Origin": api.base_url},
        )
        assert same.status_code == 201, same.text


def test_sign_out_ends_the_sessions_open_live_stream(api: Api) -> None:
    """A copy of the cookie streaming deliveries stops at sign-out, though the token stays valid."""
    _, value, _ = _cookie(_sign_in(api.base_url, api.tokens["view"], Origin=api.base_url))
    thief = httpx.Client(base_url=api.base_url, cookies={COOKIE: value}, timeout=30)
    with thief, thief.stream("GET", "/console/api/deliveries/stream") as stream:
        lines = stream.iter_lines()
        assert next(lines) == ": connected"
        with httpx.Client(base_url=api.base_url, cookies={COOKIE: value}, timeout=30) as owner:
            assert owner.post("/console/sign-out", headers={"Origin": api.base_url}).status_code == 303
        rest = list(lines)  # ends only when the server closes it (client timeout: 30 s)
    assert "event: unauthorized" in rest
    with api.client("view") as client:
        assert client.get("/api/v1/me").status_code == 200
