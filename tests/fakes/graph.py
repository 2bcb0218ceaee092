"""A local HTTPS fake of the Microsoft identity platform and of Microsoft Graph's calendar events.

Speaks the wire protocol msal and our Graph connector use:

* ``GET /{tenant}/v2.0/.well-known/openid-configuration`` (msal's authority discovery);
* ``POST /{tenant}/oauth2/v2.0/token``: client credentials; a wrong secret is ``401 invalid_client``
  (AADSTS7000215), an unknown tenant ``400 invalid_request`` (AADSTS90002); tokens expire after
  ``token_lifetime`` seconds;
* ``/v1.0/users/{id}/events``: GET with the ``singleValueExtendedProperties/any(...)`` filter, POST
  (a repeated ``transactionId`` returns the event already made), PATCH, DELETE; an unknown user is
  ``404 ErrorInvalidUser`` in Graph's error shape;
* ``POST /v1.0/$batch``: JSON batching (up to 20 requests, answered in any order, each with its own
  status), strict as Graph documents it (see :meth:`FakeGraph._batch`).

Mailboxes hold events (``fake.mailboxes[email][event_id]``). Throttling and failures on demand:
:meth:`FakeGraph.throttle` (429 + Retry-After), :meth:`FakeGraph.fail` (any status), per mailbox
:meth:`FakeGraph.fail_mailbox`, a whole $batch :meth:`FakeGraph.fail_batch`.
TLS: a throwaway CA from trustme; ``fake.ca_file`` is the bundle for the client.
"""

from __future__ import annotations

import json
import re
import secrets
import ssl
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

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
        self._mailbox_faults: dict[str, list[Response]] = {}
        self._batch_faults: list[Response] = []
        self.batch_sizes: list[int] = []
        """The number of requests of each $batch call served (refused ones included)."""
        self.batched: list[Request] = []
        """Each request of the $batch calls, as the fake ran it."""
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

    def fail_mailbox(
        self,
        email: str,
        status: int,
        times: int = 1,
        code: str = "ErrorInternalServerError",
        retry_after: int | None = None,
    ) -> None:
        """The next ``times`` calls on ``email``'s mailbox (alone or in a $batch) answer ``status``."""
        fault = graph_error(status, code, "The request failed.")
        if retry_after is not None:
            fault.headers["Retry-After"] = str(retry_after)
        self._mailbox_faults.setdefault(email.lower(), []).extend([fault] * times)

    def fail_batch(self, status: int, times: int = 1, retry_after: int | None = None) -> None:
        """The next ``times`` $batch calls are refused as a whole with ``status``."""
        fault = graph_error(status, "ServiceUnavailable", "The batch failed.")
        if retry_after is not None:
            fault.headers["Retry-After"] = str(retry_after)
        self._batch_faults.extend([fault] * times)

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
        if request.path == "/v1.0/$batch" and request.method == "POST":
            if self._batch_faults:
                return self._batch_faults.pop(0)
            return self._batch(request)
        return self._call(request)

    def _call(self, request: Request) -> Response:
        """One Graph call (on its own, or one request of a $batch)."""
        if self._faults:
            return self._faults.pop(0)
        match = EVENT_PATH.match(request.path)
        if match is None:
            return graph_error(400, "BadRequest", f"Resource not found for the segment '{request.path}'.")
        user, event_id = match.group(1).lower(), match.group(2)
        if self._mailbox_faults.get(user):
            return self._mailbox_faults[user].pop(0)
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

    def _batch(self, request: Request) -> Response:
        """JSON batching as Graph documents it: at most 20 requests, ids unique (case-insensitive),
        relative urls, a Content-Type with every body, ``dependsOn`` on earlier ids (a failed
        dependency is 424); the batch is refused as a whole (400) otherwise. Each request is run as
        a call of its own (faults included); more than 4 parallel requests on one mailbox get 429
        (MailboxConcurrency); the responses come back in reverse order (Graph promises no order)."""
        try:
            document = request.json()
        except ValueError:
            document = None
        items = document.get("requests") if isinstance(document, dict) else None
        self.batch_sizes.append(len(items) if isinstance(items, list) else 0)
        if "application/json" not in request.headers.get("content-type", ""):
            return graph_error(400, "BadRequest", "Content-Type must be application/json.")
        if not isinstance(items, list) or not items:
            return graph_error(400, "BadRequest", "Invalid batch payload format.")
        if len(items) > 20:
            return graph_error(400, "BadRequest", "The number of batch requests exceeds the limit of 20.")
        problem = _batch_problem(items)
        if problem:
            return graph_error(400, "BadRequest", problem)
        statuses: dict[str, int] = {}
        per_mailbox: dict[str, int] = {}
        responses: list[dict[str, Any]] = []
        for item in items:
            url = urlsplit("/" + item["url"].lstrip("/"))
            sub = Request(
                method=item["method"].upper(),
                path="/v1.0" + url.path,
                query={k: v[0] for k, v in parse_qs(url.query).items()},
                headers={k.lower(): str(v) for k, v in item.get("headers", {}).items()},
                body=json.dumps(item["body"]).encode() if "body" in item else b"",
            )
            self.batched.append(sub)
            match = EVENT_PATH.match(sub.path)
            mailbox = match.group(1).lower() if match else ""
            if any(statuses.get(d.lower(), 200) >= 300 for d in item.get("dependsOn", [])):
                answer = graph_error(424, "FailedDependency", "A request it depends on failed.")
            elif not item.get("dependsOn") and per_mailbox.get(mailbox, 0) >= 4:
                answer = graph_error(
                    429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit."
                )
                answer.headers["Retry-After"] = "1"
            else:
                answer = self._call(sub)
            if not item.get("dependsOn"):
                per_mailbox[mailbox] = per_mailbox.get(mailbox, 0) + 1
            statuses[item["id"].lower()] = answer.status
            entry: dict[str, Any] = {
                "id": item["id"],
                "status": answer.status,
                "headers": {"Cache-Control": "no-cache", **answer.headers},
            }
            if answer.body is not None:
                entry["headers"]["Content-Type"] = "application/json;odata.metadata=minimal"
                entry["body"] = answer.body
            responses.append(entry)
        return Response(200, {"responses": responses[::-1]})

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


def _batch_problem(items: list[Any]) -> str | None:
    """Why Graph refuses a batch's requests as a whole (None: it reads them)."""
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            return "Invalid batch payload format."
        request_id = item.get("id")
        if not isinstance(request_id, str) or not request_id:
            return "The request id is missing."
        if request_id.lower() in seen:
            return f"Batch request ids must be unique: '{request_id}'."
        if not isinstance(item.get("method"), str) or item["method"].upper() not in {
            "GET",
            "POST",
            "PATCH",
            "PUT",
            "DELETE",
        }:
            return f"Invalid method for request '{request_id}'."
        url = item.get("url")
        if not isinstance(url, str) or not url or "://" in url or url.startswith("//"):
            return f"Invalid request URL for request '{request_id}': it must be relative."
        headers = item.get("headers", {})
        if not isinstance(headers, dict):
            return f"Invalid headers for request '{request_id}'."
        if "body" in item and not any(str(k).lower() == "content-type" for k in headers):
            return f"Content-Type header must be specified with a body (request '{request_id}')."
        depends = item.get("dependsOn", [])
        if not isinstance(depends, list) or any(
            not isinstance(d, str) or d.lower() not in seen for d in depends
        ):
            return f"dependsOn of request '{request_id}' must name earlier requests."
        seen.add(request_id.lower())
    return None


def _all_day_problem(event: dict[str, Any]) -> str | None:
    """Graph refuses an all-day event whose start or end is not a midnight."""
    if not event.get("isAllDay"):
        return None
    for edge in ("start", "end"):
        if not str(event.get(edge, {}).get("dateTime", "")).endswith("T00:00:00"):
            return "Your request can't be completed. The start and end times for an all-day event must be midnight."
    return None
