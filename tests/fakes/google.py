"""A local HTTP fake of Google's OAuth token endpoint and of Calendar API v3 events.

* ``POST /token``: the JWT-bearer grant google-auth sends for a service account. The assertion's
  signature is checked with the public key of the service account this fake generated; ``sub`` is
  the impersonated user. An unknown user is ``400 invalid_grant`` "Invalid email or User ID"; a
  scope the admin did not delegate is ``401 unauthorized_client``.
* ``/calendar/v3/calendars/{calendarId}/events[/{eventId}]``: insert, get, list, update, patch and
  delete, as Google answers them: a client-supplied id must be base32hex; inserting an id that
  exists, even a deleted (``cancelled``) event, is ``409`` "The requested identifier already
  exists"; a delete leaves a ``cancelled`` event behind (deleting it again is ``410``); an all-day
  out-of-office event is ``400``; ``eventType`` cannot change.

* ``POST /batch/calendar/v3``: batch requests (multipart/mixed of application/http parts), strict
  as Google documents them (see :meth:`FakeGoogle._batch`).

Calendars (``fake.calendars[email][event_id]``) belong to users; ``primary`` is the token's user.
Rate limiting on demand: :meth:`FakeGoogle.rate_limit` (403 rateLimitExceeded, Google's JSON).
A hang on demand: :meth:`FakeGoogle.hang` holds every request (token calls included), its
connection open and unanswered, until :meth:`FakeGoogle.release`; ``hung`` counts those held now.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import secrets
import threading
import time
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.loopback import LoopbackServer, Request, Response

CALENDAR_SCOPE = "https://www.googleapis.com/auth/calendar"
EVENTS_PATH = re.compile(r"^/calendar/v3/calendars/([^/]+)/events(?:/([^/]+))?$")
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
"""google-auth always signs for Google's token endpoint, wherever ``token_uri`` points."""
EVENT_ID = re.compile(r"^[a-v0-9]{5,1024}$")


def google_error(status: int, reason: str, message: str, domain: str = "global") -> Response:
    """Google's error JSON: ``{"error": {"errors": [{domain, reason, message}], "code", "message"}}``."""
    body = {
        "error": {
            "errors": [{"domain": domain, "reason": reason, "message": message}],
            "code": status,
            "message": message,
        }
    }
    return Response(status, body)


class FakeGoogle:
    """Google OAuth + Calendar v3 on 127.0.0.1. Use as a context manager."""

    def __init__(self, *, delegated_scopes: tuple[str, ...] = (CALENDAR_SCOPE,)) -> None:
        self.delegated_scopes = set(delegated_scopes)
        self.calendars: dict[str, dict[str, dict[str, Any]]] = {}
        self.requests: list[Request] = []
        self.token_requests = 0
        self._tokens: dict[str, str] = {}
        self._faults: list[Response] = []
        self._user_faults: dict[str, list[Response]] = {}
        self._batch_faults: list[Response] = []
        self.batch_sizes: list[int] = []
        """The number of calls of each batch request served (refused ones included)."""
        self.batched: list[Request] = []
        """Each call of the batch requests, as the fake ran it."""
        self.reverse_batch_answers = False
        """Answer a batch's parts in reverse order (Google documents request order; the client must
        match parts by Content-ID anyway)."""
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._released.set()
        self._hung = 0
        self._hung_lock = threading.Lock()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._server = LoopbackServer(self._handle)
        self.url = self._server.url
        self.client_email = "absync@acme-project.iam.gserviceaccount.com"

    def __enter__(self) -> FakeGoogle:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._server.stop()

    def hang(self) -> None:
        """From now on every request waits, unanswered, until :meth:`release`."""
        self._released.clear()

    def release(self) -> None:
        """Held requests and later ones are served again."""
        self._released.set()

    @property
    def hung(self) -> int:
        """Requests held by :meth:`hang` right now."""
        with self._hung_lock:
            return self._hung

    # -- test controls ------------------------------------------------------------------------
    def add_user(self, email: str) -> dict[str, dict[str, Any]]:
        return self.calendars.setdefault(email.lower(), {})

    def service_account_info(self) -> dict[str, str]:
        """A service-account key file (as Google's console gives it) for this fake's key."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return {
            "type": "service_account",
            "project_id": "acme-project",
            "private_key_id": "k1",
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": "1234567890",
            "token_uri": "https://oauth2.googleapis.com/token",
        }

    def settings(self, **extra: Any) -> dict[str, Any]:
        """Destination settings pointing at this fake."""
        return {"token_uri": f"{self.url}/token", "api_root": f"{self.url}/", **extra}

    def rate_limit(self, times: int = 1, status: int = 403, retry_after: int | None = None) -> None:
        """The next ``times`` Calendar calls are rate limited (403 rateLimitExceeded, or 429)."""
        fault = google_error(status, "rateLimitExceeded", "Rate Limit Exceeded", domain="usageLimits")
        if retry_after is not None:
            fault.headers["Retry-After"] = str(retry_after)
        self._faults.extend([fault] * times)

    def fail(self, status: int = 503, times: int = 1) -> None:
        self._faults.extend([google_error(status, "backendError", "Backend Error")] * times)

    def fail_batch(self, status: int = 503, times: int = 1) -> None:
        """The next ``times`` batch requests are refused as a whole with ``status``."""
        self._batch_faults.extend([google_error(status, "backendError", "Backend Error")] * times)

    def fail_user(
        self,
        email: str,
        status: int,
        times: int = 1,
        reason: str = "backendError",
        retry_after: int | None = None,
    ) -> None:
        """The next ``times`` Calendar calls acting for ``email`` (alone or batched) answer ``status``."""
        fault = google_error(status, reason, "Backend Error" if status >= 500 else "Rate Limit Exceeded")
        if retry_after is not None:
            fault.headers["Retry-After"] = str(retry_after)
        self._user_faults.setdefault(email.lower(), []).extend([fault] * times)

    # -- dispatch -----------------------------------------------------------------------------
    def _handle(self, request: Request) -> Response:
        if not self._released.is_set():
            with self._hung_lock:
                self._hung += 1
            try:
                self._released.wait()
            finally:
                with self._hung_lock:
                    self._hung -= 1
        with self._lock:
            self.requests.append(request)
            if request.method == "POST" and request.path == "/token":
                return self._token(request.form())
            if request.method == "POST" and request.path == "/batch/calendar/v3":
                if self._batch_faults:
                    return self._batch_faults.pop(0)
                return self._batch(request)
            return self._calendar(request)

    def _token(self, form: dict[str, str]) -> Response:
        self.token_requests += 1
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return Response(
                400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}
            )
        try:
            claims = jwt.decode(
                form.get("assertion", ""),
                self._key.public_key(),
                algorithms=["RS256"],
                audience=GOOGLE_TOKEN_AUDIENCE,
            )
        except jwt.PyJWTError:
            return Response(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        if claims.get("iss") != self.client_email:
            return Response(
                401, {"error": "invalid_client", "error_description": "The OAuth client was not found."}
            )
        subject = str(claims.get("sub", "")).lower()
        if subject and not set(str(claims.get("scope", "")).split()) <= self.delegated_scopes:
            return Response(
                401,
                {
                    "error": "unauthorized_client",
                    "error_description": "Client is unauthorized to retrieve access tokens using this method, "
                    "or client not authorized for any of the scopes requested.",
                },
            )
        if subject and subject not in self.calendars:
            return Response(400, {"error": "invalid_grant", "error_description": "Invalid email or User ID"})
        token = "ya29." + secrets.token_urlsafe(24)
        self._tokens[token] = subject or self.client_email
        return Response(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def _batch(self, request: Request) -> Response:
        """A batch request as Google documents it (see :func:`_batch_calls` for what is refused):
        each call runs as a call of its own, with the outer request's headers where the part has
        none (Content-* aside); one ``application/http`` part per call, in request order (reversed
        with ``reverse_batch_answers``), ``Content-ID: <response-{id}>``."""
        calls = _batch_calls(request.headers.get("content-type", ""), request.body)
        self.batch_sizes.append(len(calls) if isinstance(calls, list) else 0)
        if isinstance(calls, str):
            return google_error(400, "badRequest", calls)
        outer = {k: v for k, v in request.headers.items() if not k.startswith("content-")}
        parts: list[bytes] = []
        for content_id, call in calls:
            call.headers = {**outer, **call.headers}
            self.batched.append(call)
            answer = self._calendar(call)
            payload = answer.encoded()
            lines = [f"HTTP/1.1 {answer.status} {HTTPStatus(answer.status).phrase}"]
            if payload:
                lines.append("Content-Type: application/json; charset=UTF-8")
            lines += [f"{k}: {v}" for k, v in answer.headers.items()]
            lines.append(f"Content-Length: {len(payload)}")
            part = "Content-Type: application/http\r\n"
            if content_id:
                part += f"Content-ID: <response-{content_id.strip().removeprefix('<').removesuffix('>')}>\r\n"
            parts.append(part.encode() + b"\r\n" + "\r\n".join(lines).encode() + b"\r\n\r\n" + payload)
        if self.reverse_batch_answers:
            parts.reverse()
        boundary = "batch_" + secrets.token_urlsafe(12)
        body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts)
        body += b"--" + boundary.encode() + b"--\r\n"
        return Response(200, headers={"Content-Type": f"multipart/mixed; boundary={boundary}"}, raw=body)

    def _calendar(self, request: Request) -> Response:
        user = self._tokens.get(request.headers.get("authorization", "").removeprefix("Bearer "))
        if user is None:
            return google_error(401, "authError", "Invalid Credentials")
        if self._faults:
            return self._faults.pop(0)
        if self._user_faults.get(user):
            return self._user_faults[user].pop(0)
        match = EVENTS_PATH.match(request.path)
        if match is None:
            return google_error(404, "notFound", "Not Found")
        calendar_id, event_id = unquote(match.group(1)), match.group(2)
        calendar = self.calendars.get(user if calendar_id == "primary" else calendar_id.lower())
        if calendar is None or (calendar_id != "primary" and calendar_id.lower() != user):
            return google_error(404, "notFound", "Not Found")
        if event_id is None:
            if request.method == "POST":
                return self._insert(calendar, request.json())
            if request.method == "GET":
                show_deleted = request.query.get("showDeleted") == "true"
                items = [e for e in calendar.values() if show_deleted or e["status"] != "cancelled"]
                return Response(200, {"kind": "calendar#events", "items": items})
        elif event_id not in calendar:
            return google_error(404, "notFound", "Not Found")
        elif request.method == "GET":
            return Response(200, calendar[event_id])
        elif request.method in ("PUT", "PATCH"):
            return self._update(calendar[event_id], request.json(), replace=request.method == "PUT")
        elif request.method == "DELETE":
            if calendar[event_id]["status"] == "cancelled":
                return google_error(410, "deleted", "Resource has been deleted")
            calendar[event_id]["status"] = "cancelled"
            return Response(204)
        return google_error(405, "methodNotAllowed", "Method Not Allowed")

    def _insert(self, calendar: dict[str, dict[str, Any]], body: dict[str, Any]) -> Response:
        event_id = str(body.get("id") or secrets.token_hex(13))
        if not EVENT_ID.match(event_id):
            return google_error(400, "invalid", "Invalid resource id value.")
        if event_id in calendar:
            return google_error(409, "duplicate", "The requested identifier already exists.")
        problem = _event_problem(body)
        if problem:
            return problem
        event = {"kind": "calendar#event", "status": "confirmed", **body, "id": event_id}
        event["etag"] = json.dumps(str(time.time_ns()))
        calendar[event_id] = event
        return Response(200, event)

    def _update(self, event: dict[str, Any], body: dict[str, Any], *, replace: bool) -> Response:
        # As Google: a deleted event stays cancelled unless the new body says otherwise.
        kept = {"id": event["id"], "kind": event["kind"], "status": event["status"]}
        merged = {**kept, **body} if replace else {**event, **body}
        if merged.get("eventType", "default") != event.get("eventType", "default"):
            return google_error(400, "invalid", "The event type cannot be changed.")
        problem = _event_problem(merged)
        if problem:
            return problem
        event.clear()
        event.update(merged, etag=json.dumps(str(time.time_ns())))
        return Response(200, event)


def _batch_calls(content_type: str, body: bytes) -> list[tuple[str | None, Request]] | str:
    """The calls of a batch request as (Content-ID, request), or why Google refuses it (400): not
    multipart/mixed, a part that is not application/http, a request line that is not
    ``METHOD /path HTTP/1.1`` (a full URL is refused), a path outside Calendar v3, over 1000 calls."""
    if not content_type.lower().startswith("multipart/mixed") or "boundary=" not in content_type.lower():
        return "Content-Type must be multipart/mixed with a boundary"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        return "Invalid multipart request"
    calls: list[tuple[str | None, Request]] = []
    for part in message.iter_parts():  # type: ignore[attr-defined]
        if part.get_content_type() != "application/http":
            return "Each part must be Content-Type: application/http"
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            return "Invalid application/http part"
        head, _, inner_body = payload.replace(b"\r\n", b"\n").partition(b"\n\n")
        request_line, *header_lines = head.decode("latin-1").split("\n")
        fields = request_line.split(" ")
        if len(fields) != 3 or not fields[2].startswith("HTTP/") or not fields[1].startswith("/"):
            return f"Invalid request line: {request_line[:100]!r} (a path only, no full URL)"
        url = urlsplit(fields[1])
        if not url.path.startswith("/calendar/v3/"):
            return "All the calls of a batch must go to the same API (calendar/v3)"
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length")
        if length is not None and length.isdigit():
            inner_body = inner_body[: int(length)]
        else:
            inner_body = inner_body.rstrip(b"\n")
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        calls.append((part.get("Content-ID"), Request(fields[0], url.path, query, headers, inner_body)))
        if len(calls) > 1000:
            return "A batch holds at most 1000 calls"
    return calls


def _event_problem(event: dict[str, Any]) -> Response | None:
    """Google's validation of the fields we send: out-of-office events need date-times."""
    if event.get("eventType") == "outOfOffice":
        if "date" in event.get("start", {}) or "date" in event.get("end", {}):
            return google_error(400, "invalid", "An out of office event cannot be an all-day event.")
        if event.get("attendees"):
            return google_error(400, "invalid", "An out of office event cannot have attendees.")
    for edge in ("start", "end"):
        if not event.get(edge, {}).get("dateTime") and not event.get(edge, {}).get("date"):
            return google_error(400, "required", "Missing time zone definition for start time.")
    return None
