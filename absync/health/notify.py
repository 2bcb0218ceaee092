"""Sends one health event to the operators: Slack ``chat.postMessage`` and/or a signed webhook.

Both go through the connectors' egress policy (:func:`connectors.egress_clients.guarded_client`), so an
alert address is held to the rules of a destination address (no cloud metadata, no private network
unless ``ABSYNC_ALLOWED_NETWORKS`` says so). The bot token is sent only as ``Authorization: Bearer``
to the Slack address it was entered with; neither it nor the signing secret appears in an error.

The webhook follows Standard Webhooks: ``webhook-id`` (stable per event, so a receiver drops a repeat),
``webhook-timestamp``, ``webhook-signature`` (``v1,`` HMAC-SHA256 with the ``whsec_`` secret). Body::

    {"type": "destination.failing" | "destination.disabled" | "destination.recovered",
     "event_id": ..., "at": ISO time, "destination": {"id", "tenant", "name", "kind"},
     "summary": text}
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx

from absync.health.alerts import DEFAULT_SLACK_BASE_URL, AlertSettings
from connectors.egress import NOT_ALLOWED, AddressNotAllowed, EgressPolicy
from connectors.egress_clients import guarded_client
from connectors.exceptions import ConnectorError
from connectors.http import parse_signing_secrets, sign
from connectors.redact import Redactor, secret_forms

TIMEOUT = 10.0
"""Seconds one send may take in all (connect, send, answer): a receiver that never answers, or drips
its answer a byte at a time, is given up on after it."""
MAX_ANSWER = 2_000
"""How much of a refusing answer is kept in the event's error."""
MAX_BODY = 64 * 1024
"""How much of an answer is read at most (a Slack answer or a webhook acknowledgement is small)."""
EMOJI = {"failing": ":warning:", "disabled": ":no_entry:", "recovered": ":white_check_mark:"}


class NotifyError(Exception):
    """One target did not take the alert (the message holds no secret)."""


@dataclass(frozen=True)
class HealthEvent:
    id: int
    destination_id: str
    tenant: str
    name: str
    kind: str
    event: str
    at: dt.datetime
    summary: str

    def payload(self) -> dict[str, Any]:
        return {
            "type": f"destination.{self.event}",
            "event_id": f"hev_{self.id}",
            "at": self.at.isoformat(),
            "destination": {
                "id": self.destination_id,
                "tenant": self.tenant,
                "name": self.name,
                "kind": self.kind,
            },
            "summary": self.summary,
        }

    def text(self) -> str:
        """The Slack message; what operators typed (name, id) and what destinations answered (the
        error) is escaped, so it cannot mention ``<!channel>`` or forge a link."""
        body = slack_escape(f"absync: {self.name} ({self.destination_id}) {self.summary}")
        return f"{EMOJI.get(self.event, '')} {body}".strip()


def slack_escape(text: str) -> str:
    """Slack's three control characters as entities (api.slack.com/reference/surfaces/formatting),
    and every control character (a line break included) as a space: the text stays one line, so a
    destination's answer cannot forge a line of its own."""
    one_line = re.sub(r"[\x00-\x1f\x7f]", " ", text)
    return one_line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Notifier:
    """Delivers events to the targets of one :class:`AlertSettings`."""

    def __init__(self, settings: AlertSettings, egress: EgressPolicy) -> None:
        self.settings = settings
        self.egress = egress
        secrets = {
            name: value
            for name, value in (("slack", settings.slack_token), ("webhook", settings.webhook_secret))
            if value is not None
        }
        self._redactor = Redactor(secret_forms(secrets))

    def targets(self) -> list[str]:
        return [
            name for name, on in (("slack", self.settings.slack), ("webhook", self.settings.webhook)) if on
        ]

    async def send(self, target: str, event: HealthEvent) -> None:
        """Sends ``event`` to ``target`` ("slack" or "webhook"); raises :class:`NotifyError`, at the
        latest :data:`TIMEOUT` seconds after the call (redirects are not followed)."""
        try:
            async with (
                asyncio.timeout(TIMEOUT),
                guarded_client(
                    self.egress, timeout=TIMEOUT, follow_redirects=False, max_body=MAX_BODY
                ) as client,
            ):
                if target == "slack":
                    await self._slack(client, event)
                else:
                    await self._webhook(client, event)
        except NotifyError:
            raise
        except TimeoutError:
            raise NotifyError(f"{target}: no answer within {TIMEOUT:g} s") from None
        except AddressNotAllowed:  # not an OSError, by design: it used to end the health component
            raise NotifyError(f"{target}: {NOT_ALLOWED}") from None
        except (httpx.HTTPError, OSError, ValueError, ConnectorError) as exc:
            raise NotifyError(
                self._redactor.scrub(f"{target}: {type(exc).__name__}: {exc}")[:MAX_ANSWER]
            ) from None

    async def _slack(self, client: httpx.AsyncClient, event: HealthEvent) -> None:
        token = self.settings.slack_token
        assert token is not None and self.settings.slack_channel
        base = (self.settings.slack_base_url or DEFAULT_SLACK_BASE_URL).rstrip("/") + "/"
        response = await client.post(
            f"{base}chat.postMessage",
            headers={"Authorization": f"Bearer {token.get_secret_value()}"},
            json={"channel": self.settings.slack_channel, "text": event.text(), "unfurl_links": False},
        )
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if response.status_code != 200 or not isinstance(answer, dict) or answer.get("ok") is not True:
            error = answer.get("error") if isinstance(answer, dict) else None
            raise NotifyError(
                self._redactor.scrub(f"slack: HTTP {response.status_code}: {error or response.text[:200]}")
            )

    async def _webhook(self, client: httpx.AsyncClient, event: HealthEvent) -> None:
        assert self.settings.webhook_url
        body = json.dumps(event.payload(), ensure_ascii=False, separators=(",", ":")).encode()
        message_id = f"hev_{event.id}"
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
        }
        if self.settings.webhook_secret is not None:
            keys = parse_signing_secrets(self.settings.webhook_secret.get_secret_value())
            headers["webhook-signature"] = sign(keys, message_id, timestamp, body)
        response = await client.post(self.settings.webhook_url, content=body, headers=headers)
        if not 200 <= response.status_code < 300:
            raise NotifyError(
                self._redactor.scrub(f"webhook: HTTP {response.status_code}: {response.text[:200]}")
            )
