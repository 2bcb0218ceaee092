"""The console's destination form is rendered from each kind's declaration (connectors.declaration):
every declared field and secret is there, with its label, type, help and required mark; no secret
field ever carries a value."""

from __future__ import annotations

import html
import json
from http.cookies import SimpleCookie

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from absync.web.console.session import COOKIE
from connectors.registry import declaration, declarations
from tests.connectors.egress_targets import SERVICE_ACCOUNT
from tests.web.conftest import Api

SERVICE_ACCOUNT_INFO = json.loads(SERVICE_ACCOUNT)


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


def _google(secret: str) -> dict[str, object]:
    return {
        "id": "dst-google",
        "tenant": "acme",
        "name": "Google",
        "kind": "google",
        "settings": {"test_user": "jane@acme.com"},
        "secrets": {"service_account_json": secret},
    }


def _pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def test_a_google_key_file_is_checked_when_written_and_never_echoed(api: Api) -> None:
    key = json.dumps(SERVICE_ACCOUNT_INFO)
    ec_key = _pem(ec.generate_private_key(ec.SECP256R1()))
    ed_key = _pem(ed25519.Ed25519PrivateKey.generate())
    wrong = {
        "not json": "-----BEGIN PRIVATE KEY-----\nMIIEv-not-json-at-all\n",
        "a user credential": json.dumps({"type": "authorized_user", "client_secret": "cs-5e1f9a7b"}),
        "no private key": json.dumps({**SERVICE_ACCOUNT_INFO, "private_key": ""}),
        "a broken key": json.dumps(
            {**SERVICE_ACCOUNT_INFO, "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n"}
        ),
        # Probes (docs/security.md): keys google-auth loads but cannot sign RS256 with, and a JSON
        # nested too deep for the parser (a RecursionError was a 500).
        "an EC key": json.dumps({**SERVICE_ACCOUNT_INFO, "private_key": ec_key}),
        "an Ed25519 key": json.dumps({**SERVICE_ACCOUNT_INFO, "private_key": ed_key}),
        "nested 16 kB deep": "[" * 16_000,
    }
    expected = {
        "not json": "not a JSON file",
        "a user credential": "not a service-account key file ('type' is not 'service_account')",
        "no private key": "has no private_key",
        "a broken key": "private_key of the service-account key file cannot be read",
        "an EC key": "private_key of the service-account key file is not an RSA key",
        "an Ed25519 key": "private_key of the service-account key file is not an RSA key",
        "nested 16 kB deep": "not a JSON file",
    }
    with api.client("configure") as admin:
        for what, secret in wrong.items():
            refused = admin.post("/api/v1/destinations", json=_google(secret))
            assert refused.status_code == 422, (what, refused.text)
            message = refused.json()["detail"][0]["msg"]
            assert message.startswith("secrets.service_account_json: "), (what, message)
            assert expected[what] in message, (what, message)
            for line in secret.splitlines():
                assert line[-10:] not in refused.text, what  # the file is never echoed back
        for what, body in {
            "over 16 kB": "x" * (16 * 1024 + 1),
            "not a string": SERVICE_ACCOUNT_INFO,
        }.items():
            refused = admin.post("/api/v1/destinations", json=_google(body))  # type: ignore[arg-type]
            assert refused.status_code == 422, (what, refused.text)
            assert refused.json()["detail"][0]["loc"] == ["body", "secrets", "service_account_json"]
            assert "xxxxxxxx" not in refused.text and "PRIVATE KEY" not in refused.text, what
        # A bad setting next to a good key: refused, and the key is not in the answer either.
        bad_url = _google(key)
        bad_url["settings"] = {"token_uri": "ftp://example.com/token"}
        refused = admin.post("/api/v1/destinations", json=bad_url)
        assert refused.status_code == 422 and "settings.token_uri" in refused.text
        assert "PRIVATE KEY" not in refused.text and "input" not in refused.json()["detail"][0]
        created = admin.post("/api/v1/destinations", json=_google(key))
        assert created.status_code == 201, created.text
        assert created.json()["secrets"] == {"service_account_json": "***"}
        # An update that leaves the secret out keeps it (a kept value is not checked again).
        update = {k: v for k, v in _google("").items() if k not in ("id", "tenant")}
        kept = admin.put("/api/v1/destinations/dst-google", json={**update, "name": "Google calendars"})
        assert kept.status_code == 200, kept.text
        assert kept.json()["secrets"] == {"service_account_json": "***"}
