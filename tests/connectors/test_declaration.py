"""Every destination kind is declared once, in its connector module, and completely: what the
registry, the validation and the console read."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import pytest
from pydantic import BaseModel

import connectors
from connectors.base import Connector, DigestConnector
from connectors.declaration import (
    FIELD_TYPES,
    SECRET_TYPES,
    FormField,
    KindDeclaration,
    KindSettings,
    check_declaration,
    secret_file,
)
from connectors.exceptions import ConfigurationError
from connectors.registry import (
    connector_class,
    declaration,
    declarations,
    delivery_connector_class,
    digest_connector_class,
    kinds,
    receives_changes,
)
from processors import slack_message
from schemas.destination import Destination, kind_catalog

ROOT = Path(__file__).resolve().parents[2]
DECLARED = [d.kind for d in declarations()]


def test_the_kinds_are_found_without_a_list() -> None:
    assert set(kinds()) == {"http", "graph", "ews", "google", "slack", "adp"}
    modules = {m.name for m in pkgutil.iter_modules(connectors.__path__)}
    assert set(kinds()) <= modules  # each kind lives in connectors/<kind>.py


@pytest.mark.parametrize("kind", DECLARED)
def test_every_kind_declares_settings_secrets_and_form(kind: str) -> None:
    d = declaration(kind)
    assert isinstance(d, KindDeclaration) and d.kind == kind and d.label
    assert issubclass(d.settings, KindSettings) and issubclass(d.settings, BaseModel)
    assert d.secrets, f"{kind} declares no secret"
    assert d.form, f"{kind}'s form shows no field"
    assert all(f.type in FIELD_TYPES for f in d.form)
    assert all(f.type in SECRET_TYPES for f in d.secrets)
    assert {f.name for f in d.form} <= set(d.settings.model_fields)
    assert set(d.endpoint_settings) <= set(d.settings.model_fields)
    assert connector_class(kind).kind == kind
    assert (
        ROOT / "docs" / "connectors" / f"{kind}.md"
    ).is_file() or kind == "http"  # http: docs/http-sync.md


@pytest.mark.parametrize("kind", DECLARED)
def test_every_url_setting_is_refused_unless_http(kind: str) -> None:
    catalog = kind_catalog()
    for name in declaration(kind).settings.url_settings():
        assert name in catalog.url_settings()
        catalog.check(kind, {name: "https://ok.example/x"})
        with pytest.raises(ValueError, match=rf"settings\.{name}: must be an http"):
            catalog.check(kind, {name: "file:///etc/passwd"})


def test_the_url_settings_are_those_validated_before() -> None:
    assert kind_catalog().url_settings() == {
        "url",
        "token_url",
        "token_uri",
        "api_base_url",
        "api_root",
        "base_url",
        "graph_base_url",
        "authority_host",
        "server_url",
    }


def test_each_contract_is_handed_out_typed() -> None:
    for kind in DECLARED:
        digest = declaration(kind).digest
        assert issubclass(connector_class(kind), DigestConnector if digest else Connector)
        destination = Destination(id="d", tenant="t", name="d", kind=kind)
        assert receives_changes(destination) is not digest
    assert issubclass(digest_connector_class("slack"), DigestConnector)
    with pytest.raises(ConfigurationError, match="no per-change deliveries"):
        delivery_connector_class("slack")
    with pytest.raises(ConfigurationError, match="no daily digest"):
        digest_connector_class("http")


@pytest.mark.parametrize("kind", ["base", "registry", "../http", "HTTP", "teams", "", "x" * 100, "wire"])
def test_an_unknown_kind_is_refused_by_name(kind: str) -> None:
    with pytest.raises(ConfigurationError, match="unknown destination kind"):
        connector_class(kind)
    with pytest.raises(ValueError, match="unknown destination kind"):
        kind_catalog().check(kind, {})
    assert receives_changes(Destination(id="d", tenant="t", name="d", kind=kind)) is True


def test_a_half_declared_kind_cannot_register() -> None:
    class TeamsSettings(KindSettings):
        webhook: str | None = None

    good = KindDeclaration(
        kind="teams",
        label="Teams",
        settings=TeamsSettings,
        secrets=(),
        form=(FormField("webhook", "Webhook"),),
    )
    check_declaration(good, "connectors.teams")
    with pytest.raises(TypeError, match=r"connectors/teams\.py"):
        check_declaration(good, "connectors.other")
    bad_field = KindDeclaration("teams", "Teams", TeamsSettings, (), (FormField("channel", "Channel"),))
    with pytest.raises(TypeError, match="not in its settings model"):
        check_declaration(bad_field, "connectors.teams")
    bad_select = KindDeclaration("teams", "Teams", TeamsSettings, (), (FormField("webhook", "W", "select"),))
    with pytest.raises(TypeError, match="options"):
        check_declaration(bad_select, "connectors.teams")
    both = KindDeclaration(
        "teams", "Teams", TeamsSettings, (FormField("webhook", "W", "secret"),), (FormField("webhook", "W"),)
    )
    with pytest.raises(TypeError, match="as a setting and as a secret"):
        check_declaration(both, "connectors.teams")
    no_bound = KindDeclaration(
        "teams", "Teams", TeamsSettings, (FormField("key_file", "Key", "secret_file"),), ()
    )
    with pytest.raises(TypeError, match="accept and max_bytes"):
        check_declaration(no_bound, "connectors.teams")
    too_big = KindDeclaration(
        "teams",
        "Teams",
        TeamsSettings,
        (secret_file("key_file", "Key", accept=".json", max_bytes=1 << 20),),
        (),
    )
    with pytest.raises(TypeError, match="max_bytes above"):
        check_declaration(too_big, "connectors.teams")


def test_the_slack_form_offers_the_languages_the_post_is_written_in() -> None:
    form = {f.name: f for f in declaration("slack").form}
    assert {"channel", "post_time", "language"} <= set(form)
    assert form["language"].options == slack_message.LANGUAGES
    assert declaration("slack").secret_names == ("bot_token",)
