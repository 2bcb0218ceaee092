"""Where operator alerts go: a Slack channel (``chat.postMessage`` with a bot token) and/or a signed
webhook (Standard Webhooks, ``whsec_`` secret), set by the configure right for every tenant.

Stored in the projection database (``alert_settings``, one row): the bot token and the signing secret
are Fernet-encrypted with ``ABSYNC_SECRET_KEY`` (:class:`streams.secrets.SecretBox`), write-only (the
API says only whether each is set), and never logged. A secret left out of a write is kept, unless the
address it is sent to changes (the same rule as destinations: a configure operator cannot send a stored
token to a host of their own without entering it again).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from connectors.egress import (
    DEFAULT_POLICY,
    METADATA_NAMES,
    NOT_ALLOWED,
    EgressPolicy,
    IPAddress,
    parse_address,
)
from connectors.exceptions import ConnectorError
from connectors.http import parse_signing_secrets
from projections.db import alert_settings, writer
from streams.secrets import SecretBox

ROW_ID = "default"
DEFAULT_SLACK_BASE_URL = "https://slack.com/api/"


class AlertSettingsError(ValueError):
    """An alert setting is invalid (the message says which)."""


@dataclass(frozen=True)
class AlertSettings:
    """Where alerts go, secrets decrypted (hold in memory only; never log or return them)."""

    slack_channel: str | None = None
    slack_base_url: str | None = None
    slack_token: SecretStr | None = None
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    updated_by: str | None = None
    updated_at: dt.datetime | None = None

    @property
    def slack(self) -> bool:
        return bool(self.slack_channel and self.slack_token)

    @property
    def webhook(self) -> bool:
        return bool(self.webhook_url)

    def public(self) -> dict[str, Any]:
        """What the API shows: addresses, and only whether each secret is set."""
        return {
            "slack_channel": self.slack_channel,
            "slack_base_url": self.slack_base_url,
            "slack_token_set": self.slack_token is not None,
            "webhook_url": self.webhook_url,
            "webhook_secret_set": self.webhook_secret is not None,
            "updated_by": self.updated_by,
            "updated_at": self.updated_at,
        }


def load(engine: Engine, box: SecretBox) -> AlertSettings:
    """The stored settings (all empty when none were saved)."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(alert_settings).where(alert_settings.c.id == ROW_ID)).mappings().first()
    if row is None:
        return AlertSettings()

    def secret(token: str | None) -> SecretStr | None:
        return None if not token else box.decrypt(token.encode())

    return AlertSettings(
        slack_channel=row["slack_channel"],
        slack_base_url=row["slack_base_url"],
        slack_token=secret(row["slack_token"]),
        webhook_url=row["webhook_url"],
        webhook_secret=secret(row["webhook_secret"]),
        updated_by=row["updated_by"],
        updated_at=row["updated_at"],
    )


def _literal_address(host: str) -> IPAddress | None:
    """``host`` as the address it spells without DNS: standard literals, and the legacy IPv4 forms
    the resolver takes (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``); ``localhost`` too."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return ipaddress.ip_address("127.0.0.1")
    literal = parse_address(name)
    if literal is not None:
        return literal
    try:
        return ipaddress.ip_address(socket.inet_aton(name)) if name[:1].isdigit() else None
    except OSError:
        return None


def _http_url(value: str | None, field: str, egress: EgressPolicy) -> str | None:
    """``value`` if it is an http(s) URL the egress policy may reach, as far as can be told without
    DNS (a name is checked, pinned, at every send: :mod:`absync.health.notify`)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    bad = not value.lower().startswith(("https://", "http://")) or len(value) > 2000
    if bad or any(ch.isspace() or not ch.isprintable() for ch in value):
        raise AlertSettingsError(f"{field} must be an http(s) URL of at most 2000 characters, without spaces")
    try:
        parts = urlsplit(value)
        host, _ = parts.hostname, parts.port
    except ValueError:
        host = None
    if not host:
        raise AlertSettingsError(f"{field} must be an http(s) URL with a host (and a valid port)")
    if parts.username is not None or parts.password is not None:
        raise AlertSettingsError(
            f"{field} must not carry a user or password (it is shown to operators): "
            "sign the webhook with webhook_secret instead"
        )
    literal = _literal_address(host)
    if host.rstrip(".").lower() in METADATA_NAMES or (literal is not None and not egress.permits(literal)):
        raise AlertSettingsError(f"{field}: {NOT_ALLOWED}")
    return value


def save(
    engine: Engine,
    box: SecretBox,
    *,
    actor: str,
    slack_channel: str | None,
    slack_base_url: str | None,
    slack_token: str | None,
    webhook_url: str | None,
    webhook_secret: str | None,
    egress: EgressPolicy = DEFAULT_POLICY,
) -> AlertSettings:
    """Replaces the settings; a secret given as None or "" is kept (unless its address changed).
    An address ``egress`` refuses (a literal or a metadata name: loopback, private, link-local,
    metadata, in any spelling) or one carrying a user or password is refused."""
    previous = load(engine, box)
    slack_base_url = _http_url(slack_base_url, "slack_base_url", egress)
    webhook_url = _http_url(webhook_url, "webhook_url", egress)
    channel = (slack_channel or "").strip() or None
    if channel is not None and (len(channel) > 200 or not channel.isprintable()):
        raise AlertSettingsError("slack_channel must be a channel id or name (at most 200 characters)")
    if webhook_secret:
        try:
            parse_signing_secrets(webhook_secret)  # the same whsec_ rule as the http connector
        except ConnectorError as exc:
            raise AlertSettingsError(f"webhook_secret: {exc}") from None
    kept_token = previous.slack_token if not slack_token else SecretStr(slack_token)
    kept_secret = previous.webhook_secret if not webhook_secret else SecretStr(webhook_secret)
    moved = []
    if not slack_token and previous.slack_token and (slack_base_url or None) != previous.slack_base_url:
        moved.append("slack_token")
    if not webhook_secret and previous.webhook_secret and webhook_url != previous.webhook_url:
        moved.append("webhook_secret")
    if moved:
        raise AlertSettingsError(
            f"the address changed, so the secret would be sent somewhere new: enter again {', '.join(moved)}"
        )
    values = {
        "slack_channel": channel,
        "slack_base_url": slack_base_url,
        "slack_token": None if kept_token is None else box.encrypt(kept_token.get_secret_value()).decode(),
        "webhook_url": webhook_url,
        "webhook_secret": None
        if kept_secret is None
        else box.encrypt(kept_secret.get_secret_value()).decode(),
        "updated_by": actor,
        "updated_at": dt.datetime.now(dt.UTC),
    }
    with writer(engine.connect()) as conn, conn.begin():
        if not conn.execute(
            alert_settings.update().where(alert_settings.c.id == ROW_ID).values(values)
        ).rowcount:
            conn.execute(alert_settings.insert().values(id=ROW_ID, **values))
    return load(engine, box)
