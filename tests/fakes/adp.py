"""A local HTTPS fake of ADP's token endpoint and worker-leave events, behind mutual TLS.

The server *requires* a client certificate signed by the fake's own test CA (``ssl.CERT_REQUIRED``):
a client without one, or with one from another CA, fails the TLS handshake, as at ADP's gateway
(under TLS 1.3 the client only sees the connection closed; ``max_tls`` can hold the fake to TLS 1.2,
where the client gets the alert).
The CA, the server certificate and a client certificate are made by trustme for each fake;
``fake.client_cert_pem`` / ``fake.client_key_pem`` are what a customer gets from ADP.

Wire protocol spoken:

* ``POST /auth/oauth/v2/token``: form ``grant_type=client_credentials``, ``client_id``,
  ``client_secret``; a wrong client is ``401 {"error":"invalid_client",...}``; tokens live
  ``token_lifetime`` seconds (an expired or revoked token is ``401`` on the API);
* ``POST /events/hr/v1/worker.leave.absence.request``: stores a leave per associateOID; an unknown
  associate is ``400 {"exceptionMessages":[...]}``, an unknown leave type code or a leave starting the
  same day as an existing one ``400 {"response":{"responseCode":"400","applicationCode":
  {"code":"validationError",...}}}``;
* ``POST /events/hr/v1/worker.leave.cancel``: removes the leave starting on ``leaveStartDate``;
  none is ``404`` with ``exceptionMessages``.

Faults on demand: :meth:`FakeAdp.fail` queues any answer for the next API calls (429, 503, 400...).
"""

from __future__ import annotations

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

TOKEN_PATH = "/auth/oauth/v2/token"
REQUEST_PATH = "/events/hr/v1/worker.leave.absence.request"
CANCEL_PATH = "/events/hr/v1/worker.leave.cancel"


def validation_error(message: str, status: int = 400) -> Response:
    """ADP's validation shape."""
    return Response(
        status,
        {
            "response": {
                "responseCode": str(status),
                "methodCode": "POST",
                "applicationCode": {"code": "validationError", "typeCode": "error", "message": message},
            }
        },
    )


def exception_messages(status: int, message: str) -> Response:
    """ADP's other error shape."""
    return Response(status, {"exceptionMessages": [{"messageType": "error", "message": message}]})


class FakeAdp:
    """ADP accounts + HR events on 127.0.0.1 over mutual TLS. Use as a context manager."""

    def __init__(
        self,
        *,
        client_id: str = "adp-client-0042",
        client_secret: str = "adp-Client-S3cret-Value",
        token_lifetime: int = 3600,
        leave_codes: tuple[str, ...] = ("VAC", "SICK", "RTT"),
        associates: tuple[str, ...] = ("G3ABCDEF0123456789",),
        max_tls: ssl.TLSVersion | None = None,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.leave_codes = set(leave_codes)
        self.leaves: dict[str, list[dict[str, Any]]] = {aoid: [] for aoid in associates}
        self.requests: list[Request] = []
        self.tokens_issued: list[str] = []
        self._tokens: dict[str, float] = {}
        self._faults: list[Response] = []
        self._lock = threading.Lock()

        self.ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(context)
        self.ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
        if max_tls is not None:
            context.maximum_version = max_tls
        client = self.ca.issue_cert("absync-client@acme.example")
        self.client_cert_pem = b"".join(blob.bytes() for blob in client.cert_chain_pems).decode()
        self.client_key_pem = client.private_key_pem.bytes().decode()
        self._dir = tempfile.TemporaryDirectory(prefix="fake-adp-")
        self.ca_file = str(Path(self._dir.name) / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self._server = LoopbackServer(self._handle, context)
        self.url = self._server.url

    def __enter__(self) -> FakeAdp:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
        self._dir.cleanup()

    # -- test controls ------------------------------------------------------------------------
    def fail(self, response: Response, times: int = 1) -> None:
        """The next ``times`` event calls get ``response``."""
        self._faults.extend([response] * times)

    def revoke_tokens(self) -> None:
        """Every token issued so far is refused from now on (as after a key rotation at ADP)."""
        self._tokens.clear()

    def settings(self, **extra: Any) -> dict[str, Any]:
        """Destination settings pointing at this fake."""
        return {
            "client_id": self.client_id,
            "token_url": f"{self.url}{TOKEN_PATH}",
            "api_base_url": self.url,
            "ca_bundle": self.ca_file,
            **extra,
        }

    def api_requests(self) -> list[Request]:
        return [r for r in self.requests if r.path != TOKEN_PATH]

    # -- dispatch -----------------------------------------------------------------------------
    def _handle(self, request: Request) -> Response:
        with self._lock:
            self.requests.append(request)
            if request.method != "POST":
                return exception_messages(405, f"Method {request.method} not allowed")
            if request.path == TOKEN_PATH:
                return self._token(request.form())
            token = request.headers.get("authorization", "").removeprefix("Bearer ")
            if self._tokens.get(token, 0) < time.time():
                return Response(401, {"error": "invalid_token", "error_description": "Access token expired"})
            if self._faults:
                return self._faults.pop(0)
            events = (request.json() or {}).get("events") or [{}]
            data = events[0].get("data") or {}
            if request.path == REQUEST_PATH:
                return self._request(data)
            if request.path == CANCEL_PATH:
                return self._cancel(data)
            return exception_messages(404, f"Resource {request.path} not found")

    def _token(self, form: dict[str, str]) -> Response:
        if form.get("grant_type") != "client_credentials":
            return Response(400, {"error": "unsupported_grant_type", "error_description": "grant type"})
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return Response(
                401,
                {
                    "error": "invalid_client",
                    "error_description": "The given client credentials were not valid",
                },
            )
        token = str(uuid.UUID(bytes=secrets.token_bytes(16)))
        self._tokens[token] = time.time() + self.token_lifetime
        self.tokens_issued.append(token)
        return Response(
            200,
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "scope": "api",
            },
        )

    def _request(self, data: dict[str, Any]) -> Response:
        context = data.get("eventContext") or {}
        leave = ((data.get("transform") or {}).get("workerLeave") or {}).get("leaveAbsence") or {}
        aoid = context.get("associateOID")
        if aoid not in self.leaves:
            return exception_messages(400, f"Worker with associateOID {aoid} was not found")
        code = (leave.get("leaveTypeCode") or {}).get("codeValue")
        if code not in self.leave_codes:
            return validation_error(f"Leave type code '{code}' is not valid")
        start = str(leave.get("startDateTime", ""))
        if any(stored["startDateTime"][:10] == start[:10] for stored in self.leaves[aoid]):
            return validation_error(f"A leave of absence already starts on {start[:10]}")
        stored = {**leave, "workAssignmentID": context.get("workAssignmentID"), "eventID": uuid.uuid4().hex}
        self.leaves[aoid].append(stored)
        return self._complete(stored["eventID"])

    def _cancel(self, data: dict[str, Any]) -> Response:
        context = data.get("eventContext") or {}
        aoid, start = str(context.get("associateOID")), str(context.get("leaveStartDate", ""))
        held = self.leaves.get(aoid)
        if held is None:
            return exception_messages(400, f"Worker with associateOID {aoid} was not found")
        remaining = [leave for leave in held if leave["startDateTime"][:10] != start]
        if len(remaining) == len(held):
            return exception_messages(404, f"No leave of absence starting on {start}")
        self.leaves[aoid] = remaining
        return self._complete(uuid.uuid4().hex)

    @staticmethod
    def _complete(event_id: str) -> Response:
        return Response(
            200, {"events": [{"eventID": event_id, "eventStatusCode": {"codeValue": "Complete"}}]}
        )
