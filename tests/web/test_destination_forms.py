"""The console's destination form is rendered from each kind's declaration (connectors.declaration):
every declared field and secret is there, with its label, type, help and required mark; no secret
field ever carries a value."""

from __future__ import annotations

import html
from http.cookies import SimpleCookie

import httpx
import pytest

from absync.web.console.session import COOKIE
from connectors.registry import declaration, declarations
from tests.web.conftest import Api


def _browser(api: Api) -> httpx.Client:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        signed_in = client.post(
            "/console/session", data={"token": api.tokens["configure"]}, headers={"Origin": api.base_url}
        )
    jar = SimpleCookie()
    jar.load(signed_in.headers["set-cookie"])
    return httpx.Client(base_url=api.base_url, cookies={COOKIE: jar[COOKIE].value}, timeout=30)


def test_every_declared_kind_has_its_form(api: Api) -> None:
    with _browser(api) as browser:
        listing = browser.get("/console/destinations")
        assert listing.status_code == 200
        for d in declarations():
            assert f'<option value="{d.kind}">{d.label}</option>' in html.unescape(listing.text)
            page = browser.get("/console/destinations/new", params={"kind": d.kind})
            assert page.status_code == 200
            text, shown = page.text, html.unescape(page.text)
            assert f'value="{d.kind}"' in text and d.label in shown
            for field in d.form:
                assert f'data-setting="{field.name}"' in text, (d.kind, field.name)
                assert field.label in shown
                if field.help:
                    assert field.help in shown
                if field.type not in ("checkbox", "select"):
                    tag = text.split(f'id="s-{field.name}"', 1)[1].split(">", 1)[0]
                    assert f'type="{field.type}"' in tag
                    assert ("required" in tag) is field.required
            for field in d.secrets:
                assert f'data-secret="{field.name}"' in text, (d.kind, field.name)
                tag = text.split(f'id="k-{field.name}"', 1)[0].rsplit("<", 1)[1]
                assert tag.startswith("textarea" if field.type == "secret_text" else "input")
                assert "value=" not in text.split(f'id="k-{field.name}"', 1)[1].split(">", 1)[0]


@pytest.mark.parametrize("kind", ["teams", "../http", ""])
def test_an_unknown_kind_shows_the_default_form(api: Api, kind: str) -> None:
    with _browser(api) as browser:
        page = browser.get("/console/destinations/new", params={"kind": kind})
    assert page.status_code == 200
    assert all(f'data-setting="{f.name}"' in page.text for f in declaration("http").form)
