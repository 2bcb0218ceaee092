"""Secrets are bound to where they are sent: an update that moves a destination's endpoint must enter
its secrets again (API, and so the console, which goes through it), else the stored token would go
to the new host at the next Test connection or delivery."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.registry import declarations
from schemas.destination import Destination
from streams.destinations import DestinationError, merge_secrets
from tests.fakes.receiver import Receiver
from tests.web.conftest import Api

TOKEN = "bound-bearer-token-4f1c9a"


def hook(url: str, **secrets: str) -> dict[str, Any]:
    return {"name": "Hook", "kind": "http", "settings": {"url": url, "auth": "bearer"}, "secrets": secrets}


def test_moving_the_url_without_the_token_is_refused_and_sends_nothing(api: Api) -> None:
    with (
        Receiver() as owner,
        Receiver() as attacker,
        api.client("configure") as admin,
    ):
        created = admin.post(
            "/api/v1/destinations", json={"id": "dst-bound", "tenant": "acme", **hook(owner.url, token=TOKEN)}
        )
        assert created.status_code == 201, created.text
        moved = admin.put("/api/v1/destinations/dst-bound", json=hook(attacker.url + "/steal"))
        tested = admin.post("/api/v1/destinations/dst-bound/test")
        kept = admin.get("/api/v1/destinations/dst-bound").json()
        renamed = admin.put("/api/v1/destinations/dst-bound", json={**hook(owner.url), "name": "Renamed"})
        re_entered = admin.put(
            "/api/v1/destinations/dst-bound", json=hook(attacker.url + "/new", token="t2-0000")
        )
        stolen = [r for r in attacker.requests if r.headers.get("authorization", "").endswith(TOKEN)]
    assert moved.status_code == 422
    assert "url" in moved.text and "token" in moved.text and "enter them again" in moved.text
    assert TOKEN not in moved.text
    assert kept["settings"]["url"] == owner.url and kept["revision"] == 1
    assert tested.status_code == 200  # went to the owner's URL, the one the token belongs to
    assert renamed.status_code == 200, renamed.text  # same endpoint: the token is kept
    assert re_entered.status_code == 200, re_entered.text  # moved with its secret entered again
    assert stolen == []


def test_graph_authority_change_needs_the_client_secret_again(api: Api) -> None:
    settings = {"tenant_id": "t1", "client_id": "c1", "authority_host": "https://login.microsoftonline.com"}
    graph = {"name": "Graph", "kind": "graph", "settings": settings}
    with api.client("configure") as admin:
        admin.post(
            "/api/v1/destinations",
            json={"id": "dst-g", "tenant": "acme", **graph, "secrets": {"client_secret": "cs-1234567"}},
        )
        moved = admin.put(
            "/api/v1/destinations/dst-g",
            json={**graph, "settings": {**settings, "authority_host": "https://evil.example"}},
        )
    assert moved.status_code == 422 and "authority_host" in moved.text and "client_secret" in moved.text


def _destination(kind: str, settings: dict[str, Any]) -> Destination:
    return Destination(
        id="d", tenant="acme", name="d", kind=kind, settings=settings, secrets={"s": b"old"}, revision=1
    )


@pytest.mark.parametrize(("kind", "name"), [(d.kind, n) for d in declarations() for n in d.endpoint_settings])
def test_every_endpoint_setting_binds_the_secrets(kind: str, name: str) -> None:
    before = _destination(kind, {name: "https://a.example"})
    with pytest.raises(DestinationError, match=rf"{name} changed.*enter them again.*\bs\b"):
        merge_secrets(before, kind, {name: "https://b.example"}, {})
    assert merge_secrets(before, kind, {name: "https://b.example"}, {"s": b"new"}) == {"s": b"new"}
    assert merge_secrets(before, kind, {name: "https://a.example/"}, {}) == {"s": b"old"}


def test_a_kind_change_binds_the_secrets_too() -> None:
    with pytest.raises(DestinationError, match="kind changed"):
        merge_secrets(_destination("http", {"url": "https://a.example"}), "slack", {}, {})
