"""A local HTTPS fake of the Microsoft identity platform and of Microsoft Graph's calendar events.

Speaks the wire protocol msal and our Graph connector use:

* ``GET /{tenant}/v2.0/.well-known/openid-configuration`` (msal's authority discovery);
* ``POST /{tenant}/oauth2/v2.0/token``: client credentials; a wrong secret is ``401 invalid_client``
  (AADSTS7000215), an unknown tenant ``400 invalid_request`` (AADSTS90002); tokens expire after
  ``token_lifetime`` seconds;
* ``/v1.0/users/{id}/events``: GET with the ``singleValueExtendedProperties/any(...)`` filter, POST
  (a repeated ``transactionId`` returns the event already made), PATCH, DELETE; an unknown user is
  ``404 ErrorInvalidUser`` in Graph's error shape.

Mailboxes hold events (``fake.mailboxes[email][event_id]``). Throttling and failures on demand:
:meth:`FakeGraph.throttle` (429 + Retry-After), :meth:`FakeGraph.fail` (any status).
TLS: a throwaway CA from trustme; ``fake.ca_file`` is the bundle for the client.
"""

from __future__ import annotations

import re
import secrets
import ssl
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import trustme

from tests.fakes.loopback import LoopbackServer, Request, Response

FILTER = re.compile(
    r"singleValueExtendedProperties/any\(ep: ep/id eq '(.*?)' and ep/value eq '((?:[^']|'')*)'\)"
)
EVENT_PATH = re.compile(r"^/v1\.0/users/([^/]+)/events(?:/([^/]+))?$")


def graph_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """Graph's error JSON: ``{"error": {"code", "message", "innerError"}}``."""
    body = {"error": {"code": code, "message": message, "innerError": {"request-id": str(uuid.uuid4())}}}
    return Response(status, body, headers or {})


class FakeGraph:
    """Microsoft identity + Graph events on 127.0.0.1 over TLS. Use as a context manager."""

    def __init__(
        self,
        *,
        tenant_id: str = "contoso-tenant",
        client_id: str = "app-1234",
        client_secret: str = "s3cr3t-Graph-Client-Value",
        token_lifetime: int = 3600,
    ) -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.mailboxes: dict[str, dict[str, dict[str, Any]]] = {}
        self.requests: list[Request] = []
        self.token_requests = 0
        self._tokens: dict[str, float] = {}
        self._faults: list[Response] = []
        self._lock = threading.Lock()
        ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        self._dir = tempfile.TemporaryDirectory(prefix="fake-graph-")
        self.ca_file = str(Path(self._dir.name) / "ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        self._server = LoopbackServer(self._handle, context)
        self.url = self._server.url

    def __enter__(self) -> FakeGraph:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
        self._dir.cleanup()

    # -- test controls ------------------------------------------------------------------------
    def add_mailbox(self, email: str) -> dict[str, dict[str, Any]]:
        return self.mailboxes.setdefault(email.lower(), {})

    def throttle(self, times: int = 1, retry_after: int = 7) -> None:
        """The next ``times`` Graph calls answer 429 with ``Retry-After``."""
        fault = graph_error(429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
        fault.headers["Retry-After"] = str(retry_after)
        self._faults.extend([fault] * times)

    def fail(
        self, status: int, times: int = 1, code: str = "ServiceUnavailable", retry_after: int | None = None
    ) -> None:
        """The next ``times`` Graph calls answer ``status`` (with ``Retry-After`` when given)."""
        fault = graph_error(status, code, "The request failed.")
        if retry_after is not None:
            fault.headers["Retry-After"] = str(retry_after)
        self._faults.extend([fault] * times)

    def settings(self, **extra: Any) -> dict[str, Any]:
        """Destination settings pointing at this fake."""
        return {
            "tenant_id": self.tenant_id,
            "client_id": self.client_id,
            "authority_host": self.url,
            "graph_base_url": f"{self.url}/v1.0",
            "ca_bundle": self.ca_file,
            **extra,
        }

    # -- dispatch -----------------------------------------------------------------------------
    def _handle(self, request: Request) -> Response:
        with self._lock:
            self.requests.append(request)
            if request.path.startswith("/v1.0/"):
                return self._graph(request)
            return self._identity(request)

    def _identity(self, request: Request) -> Response:
        tenant, _, rest = request.path.strip("/").partition("/")
        if tenant != self.tenant_id:
            return Response(
                400, {"error": "invalid_request", "error_description": "AADSTS90002: Tenant not found."}
            )
        base = f"{self.url}/{tenant}"
        if request.method == "GET" and rest == "v2.0/.well-known/openid-configuration":
            return Response(
                200,
                {
                    "issuer": f"{base}/v2.0",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                },
            )
        if request.method == "POST" and rest == "oauth2/v2.0/token":
            return self._token(request.form())
        return Response(404, {"error": "not_found"})

    def _token(self, form: dict[str, str]) -> Response:
        self.token_requests += 1
        if form.get("grant_type") != "client_credentials":
            return Response(400, {"error": "unsupported_grant_type", "error_description": "AADSTS70003"})
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return Response(
                401,
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret "
                    "being sent in the request is the client secret value, not the client secret ID.\r\n"
                    "Trace ID: 0000",
                    "error_codes": [7000215],
                },
            )
        if form.get("scope") != "https://graph.microsoft.com/.default":
            return Response(400, {"error": "invalid_scope", "error_description": "AADSTS1002012"})
        token = secrets.token_urlsafe(24)
        self._tokens[token] = time.time() + self.token_lifetime
        return Response(
            200, {"token_type": "Bearer", "expires_in": self.token_lifetime, "access_token": token}
        )

    def _graph(self, request: Request) -> Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self._tokens.get(token, 0) < time.time():
            return graph_error(
                401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."
            )
        if self._faults:
            return self._faults.pop(0)
        match = EVENT_PATH.match(request.path)
        if match is None:
            return graph_error(400, "BadRequest", f"Resource not found for the segment '{request.path}'.")
        user, event_id = match.group(1).lower(), match.group(2)
        mailbox = self.mailboxes.get(user)
        if mailbox is None:
            return graph_error(404, "ErrorInvalidUser", f"The requested user '{user}' is invalid.")
        if event_id is None:
            if request.method == "GET":
                return self._list(mailbox, request.query)
            if request.method == "POST":
                return self._create(mailbox, request.json())
        elif event_id in mailbox:
            if request.method == "PATCH":
                return self._update(mailbox[event_id], request.json())
            if request.method == "DELETE":
                del mailbox[event_id]
                return Response(204)
        else:
            return graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return graph_error(405, "ErrorInvalidRequest", "The OData request is not supported.")

    def _list(self, mailbox: dict[str, dict[str, Any]], query: dict[str, str]) -> Response:
        found = list(mailbox.values())
        if "$filter" in query:
            match = FILTER.fullmatch(query["$filter"])
            if match is None:
                return graph_error(400, "BadRequest", "Invalid filter clause")
            prop_id, value = match.group(1), match.group(2).replace("''", "'")
            found = [
                event
                for event in found
                if any(
                    p["id"].lower() == prop_id.lower() and p["value"] == value
                    for p in event.get("singleValueExtendedProperties", [])
                )
            ]
        expand = "singleValueExtendedProperties" in query.get("$expand", "")
        shown = [
            {k: v for k, v in event.items() if expand or k != "singleValueExtendedProperties"}
            for event in found
        ]
        return Response(200, {"value": shown})

    def _create(self, mailbox: dict[str, dict[str, Any]], body: dict[str, Any]) -> Response:
        transaction_id = body.get("transactionId")
        for event in mailbox.values():
            if transaction_id and event.get("transactionId") == transaction_id:
                return Response(201, event)
        problem = _all_day_problem(body)
        if problem:
            return graph_error(400, "ErrorInvalidRequest", problem)
        event = {**body, "id": "AAMk" + secrets.token_hex(16)}
        mailbox[event["id"]] = event
        return Response(201, event)

    def _update(self, event: dict[str, Any], body: dict[str, Any]) -> Response:
        problem = _all_day_problem({**event, **body})
        if problem:
            return graph_error(400, "ErrorInvalidRequest", problem)
        event.update(body)
        return Response(200, event)


def _all_day_problem(event: dict[str, Any]) -> str | None:
    """Graph refuses an all-day event whose start or end is not a midnight."""
    if not event.get("isAllDay"):
        return None
    for edge in ("start", "end"):
        if not str(event.get(edge, {}).get("dateTime", "")).endswith("T00:00:00"):
            return "Your request can't be completed. The start and end times for an all-day event must be midnight."
    return None
