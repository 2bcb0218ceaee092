"""The three calendar kinds behind one face, for tests that run the same scenario on each:
Graph, EWS and Google, each with its local fake (the real client library runs against it)."""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Any

from pydantic import SecretStr

from connectors.base import Connector
from connectors.ews import EwsConnector
from connectors.google import GoogleCalendarConnector
from connectors.graph import GraphConnector
from tests.connectors.deliveries import make_destination
from tests.fakes.ews import FakeExchange
from tests.fakes.google import FakeGoogle
from tests.fakes.graph import FakeGraph
from tests.fakes.loopback import loopback_options

KINDS = ("graph", "ews", "google")


class Calendars:
    """One kind's fake and connector, seen the same way: the live events of a mailbox."""

    def __init__(self, kind: str, stack: ExitStack) -> None:
        self.kind = kind
        if kind == "graph":
            self.graph = stack.enter_context(FakeGraph())
        elif kind == "ews":
            self.ews = stack.enter_context(FakeExchange())
        else:
            self.google = stack.enter_context(FakeGoogle())

    def add_mailbox(self, email: str) -> None:
        if self.kind == "graph":
            self.graph.add_mailbox(email)
        elif self.kind == "ews":
            self.ews.add_mailbox(email)
        else:
            self.google.add_user(email)

    def settings(self, **extra: Any) -> dict[str, Any]:
        """The destination settings that point at the fake."""
        if self.kind == "graph":
            return self.graph.settings(**extra)
        if self.kind == "ews":
            return {
                "server_url": self.ews.url,
                "auth_type": "basic",
                "server_version": "Exchange2016",
                "username": self.ews.username,
                **extra,
            }
        return self.google.settings(**extra)

    def secrets(self) -> dict[str, str]:
        """The destination's secrets, in clear."""
        if self.kind == "graph":
            return {"client_secret": self.graph.client_secret}
        if self.kind == "ews":
            return {"password": self.ews.password}
        return {"service_account_json": json.dumps(self.google.service_account_info())}

    def connector(self, **settings: Any) -> Connector:
        destination = make_destination(self.kind, self.settings(**settings))
        secrets = {name: SecretStr(value) for name, value in self.secrets().items()}
        classes: dict[str, type[Connector]] = {
            "graph": GraphConnector,
            "ews": EwsConnector,
            "google": GoogleCalendarConnector,
        }
        return classes[self.kind](destination, secrets, loopback_options(5))

    def shown(self, email: str) -> list[str]:
        """How each live event of the mailbox shows the absence: "busy" or "tentative"."""
        if self.kind == "graph":
            return [
                "tentative" if e["showAs"] == "tentative" else "busy"
                for e in self.graph.mailboxes[email].values()
            ]
        if self.kind == "ews":
            return [
                "tentative" if i.fields.get("LegacyFreeBusyStatus") == "Tentative" else "busy"
                for i in self.ews.items(email)
            ]
        live = [e for e in self.google.calendars[email].values() if e["status"] != "cancelled"]
        return ["tentative" if e["status"] == "tentative" else "busy" for e in live]
