"""Google Workspace calendars through Calendar API v3 (kind ``google``).

Authentication: a service account with domain-wide delegation; for each employee, google-auth
signs a JWT-bearer grant with ``sub`` = the employee's address (``with_subject``). google-auth,
httplib2 and google-api-python-client are synchronous, so calls run on this destination's own threads
(:meth:`Connector.run_blocking`, never asyncio's default executor); every HTTP
exchange (token calls included, their credentials masked) is recorded through :class:`_RecordingHttp`.

Idempotency: the event id is computed from the absence (``google_event_id``), so inserting it twice
cannot make two events. Google keeps a deleted event as ``cancelled`` and refuses to insert its id
again (409): then the event is replaced with an update that sets its status back.

Batch mode (setting ``batch_requests: true``, off by default): concurrent deliveries share batch
requests of up to 50 calls (:mod:`connectors.google_batching`); each delivery still makes its own
calls, in its own order, with its own employee's token, and gets its own result.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import google.auth.exceptions
import httplib2
import httpx
import structlog
from google.oauth2 import service_account
from google_auth_httplib2 import AuthorizedHttp, Request
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from pydantic import SecretStr

from connectors import google_batching
from connectors.base import CallRecorder, Connector, ConnectorOptions, DeliveryOutcome
from connectors.batching import BatchItem, ItemResult
from connectors.calendar import (
    NO_EMAIL,
    CalendarEvent,
    CalendarSettings,
    MailboxGone,
    google_event_id,
    log_mailbox,
    mailboxes,
    no_email,
    wanted_event,
)
from connectors.declaration import (
    CALENDAR_FORM,
    CalendarSettingsModel,
    FormField,
    HttpUrlSetting,
    KindDeclaration,
    secret_file,
    setting,
)
from connectors.egress import EgressPolicy
from connectors.egress_clients import httplib2_connection_type
from connectors.exceptions import ConfigurationError, RetryableError
from connectors.registry import register
from connectors.wire import BatchSession, Shown, record, status_error
from schemas.delivery import Delivery
from schemas.destination import Destination

log = structlog.get_logger(__name__)

SCOPES = ["https://www.googleapis.com/auth/calendar"]
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
DEFAULT_API_ROOT = "https://www.googleapis.com/"
SERVICE_PATH = "calendar/v3/"
CALENDAR = "primary"
"""The impersonated employee's own calendar."""
RATE_LIMIT_REASONS = ("rateLimitExceeded", "userRateLimitExceeded")
AUTO_DECLINE_MODES = (
    "declineNone",
    "declineAllConflictingInvitations",
    "declineOnlyNewConflictingInvitations",
)
GONE_STATUSES = (404, 410)


class _RecordingHttp(httplib2.Http):  # type: ignore[misc]
    """httplib2 that records each exchange; the token call's assertion and token are masked. Every
    connection (token calls and redirects included) is opened through the egress policy."""

    def __init__(self, recorder: CallRecorder, token_uri: str, timeout: float, egress: EgressPolicy) -> None:
        super().__init__(timeout=timeout, proxy_info=None)
        self.recorder = recorder
        self.token_uri = token_uri
        self.egress = egress

    def request(
        self, uri: str, method: str = "GET", body: Any = None, headers: Any = None, **kwargs: Any
    ) -> Any:  # type: ignore[override]
        is_token = uri == self.token_uri
        kwargs["connection_type"] = httplib2_connection_type(self.egress, uri)

        def shown(result: tuple[Any, Any]) -> Shown:
            response, content = result
            return (
                response.status,
                dict(response),
                "<access token, masked>" if is_token and response.status == 200 else content,
            )

        return record(
            self.recorder,
            method,
            uri,
            headers or {},
            "<JWT assertion, masked>" if is_token else body,
            lambda: super(_RecordingHttp, self).request(uri, method, body=body, headers=headers, **kwargs),
            shown,
            errors=(OSError, httplib2.HttpLib2Error),
        )


def check_service_account_json(value: str) -> None:
    """Raises ValueError, saying what is wrong and never quoting the file, unless ``value`` is a
    service-account key file as Google Cloud's console downloads it (JSON, ``type``
    ``service_account``, a ``client_email`` and a PEM ``private_key`` google-auth can load and sign
    RS256 tokens with: an RSA key, not an EC or Ed25519 one)."""
    try:
        info = json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to be a key file
        raise ValueError("not a JSON file; upload the service account's JSON key file") from None
    if not isinstance(info, dict):
        raise ValueError("not a service-account key file (the JSON is not an object)")
    if info.get("type") != "service_account":
        raise ValueError(
            "not a service-account key file ('type' is not 'service_account'): create a key of the "
            "service account (IAM > Service accounts > Keys > Add key > JSON)"
        )
    missing = [k for k in ("client_email", "private_key") if not isinstance(info.get(k), str) or not info[k]]
    if missing:
        raise ValueError(f"the service-account key file has no {' or '.join(missing)}")
    try:
        credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            {**info, "token_uri": info.get("token_uri") or DEFAULT_TOKEN_URI}, scopes=SCOPES
        )
    except (ValueError, KeyError, TypeError):
        raise ValueError("the private_key of the service-account key file cannot be read") from None
    try:  # google-auth loads an EC or Ed25519 key too, and fails only when it signs a token (RS256)
        credentials.signer.sign(b"absync key check")
    except (ValueError, TypeError, AttributeError):
        raise ValueError(
            "the private_key of the service-account key file is not an RSA key (Google's keys are RSA)"
        ) from None


class GoogleSettings(CalendarSettingsModel):
    token_uri: HttpUrlSetting = setting(f"The token endpoint (default {DEFAULT_TOKEN_URI}).")
    api_root: HttpUrlSetting = setting(f"The API root (default {DEFAULT_API_ROOT}).")
    test_user: Any = setting("A mailbox of the domain, for the connection test (proves delegation).")
    auto_decline_mode: Any = setting(f"One of {', '.join(AUTO_DECLINE_MODES)} (default declineNone).")
    decline_message: Any = setting("The message of declined meetings.")
    batch_requests: Any = setting(
        "Send concurrent deliveries' calls in batch requests of 50 (default false)."
    )


DECLARATION = KindDeclaration(
    kind="google",
    label="Google Calendar",
    settings=GoogleSettings,
    secrets=(
        secret_file(
            "service_account_json",
            "Service account key (JSON file)",
            "The key file downloaded from Google Cloud (IAM > Service accounts > Keys), at most 16 kB.",
            accept=".json,application/json",
            check=check_service_account_json,
        ),
    ),
    form=(
        FormField("test_user", "User for the connection test", help="A mailbox of the domain."),
        FormField("auto_decline_mode", "Decline meetings during absences", help="e.g. declineNone."),
        FormField("decline_message", "Decline message"),
        FormField("batch_requests", "Batch requests (up to 50 calls per request)", "checkbox"),
        *CALENDAR_FORM,
    ),
    endpoint_settings=("token_uri", "api_root"),
)


@register
class GoogleCalendarConnector(Connector):
    """Keeps one out-of-office event per absence in the employee's Google calendar."""

    declaration = DECLARATION

    def __init__(
        self,
        destination: Destination,
        secrets: Mapping[str, SecretStr],
        options: ConnectorOptions | None = None,
    ) -> None:
        super().__init__(destination, secrets, options)
        self.token_uri = str(self.setting("token_uri", DEFAULT_TOKEN_URI))
        self.api_root = str(self.setting("api_root", DEFAULT_API_ROOT))
        self.auto_decline = str(self.setting("auto_decline_mode", "declineNone"))
        if self.auto_decline not in AUTO_DECLINE_MODES:
            raise ConfigurationError(
                f"setting 'auto_decline_mode' must be one of {', '.join(AUTO_DECLINE_MODES)}"
            )
        self.decline_message: str | None = self.setting("decline_message")
        self.calendar = CalendarSettings.from_settings(self.settings)
        self._base_credentials: service_account.Credentials | None = None
        self._delegated: dict[str, service_account.Credentials] = {}
        self._service: Any = None
        self._session = BatchSession("GoogleCalendarConnector", self.setting("batch_requests", False))

    async def setup(self) -> None:
        self._service = await self.run_blocking(
            functools.partial(
                build,
                "calendar",
                "v3",
                http=self._http(CallRecorder()),  # unused (each call brings its own): guarded all the same
                static_discovery=True,
                cache_discovery=False,
                # api_endpoint replaces the discovery document's rootUrl *and* servicePath.
                client_options={"api_endpoint": f"{self.api_root.rstrip('/')}/{SERVICE_PATH}"},
            )
        )
        if self._session.batch_requests:  # only batch mode uses an httpx client (direct calls: httplib2)
            self._session.start(
                self.options,
                self.deliver_batch,
                max_items=google_batching.MAX_REQUESTS,
                deadline=self.attempt_deadline,
                name=f"google:{self.destination.id}",
            )

    async def close(self) -> None:
        await self._session.close()

    async def test_connection(self, recorder: CallRecorder) -> DeliveryOutcome:
        """Gets a token for the service account itself, or for ``test_user`` (proves delegation)."""
        subject: str | None = self.setting("test_user")
        credentials = self._for(subject) if subject else self._base()
        transport = Request(self._http(recorder))
        await self._run(lambda: credentials.refresh(transport), subject or "the service account")  # type: ignore[no-untyped-call]
        return DeliveryOutcome(summary=f"token acquired for {subject or credentials.service_account_email}")

    async def deliver(self, delivery: Delivery, recorder: CallRecorder) -> DeliveryOutcome:
        return await self._session.deliver(delivery, recorder, self.deliver_one)

    async def deliver_batch(self, items: Sequence[BatchItem]) -> list[ItemResult]:
        """The batch mode's MicroBatcher sender (see :mod:`connectors.google_batching`)."""
        return await google_batching.deliver_batch(self, items)

    async def deliver_one(self, delivery: Delivery, recorder: CallRecorder) -> DeliveryOutcome:
        """One delivery's calls, in order (each its own request, or its part of a round's batch)."""
        current, moved_from = mailboxes(delivery)
        event_id = google_event_id(delivery.tenant, delivery.absence_id)
        wanted = wanted_event(delivery, self.calendar)
        moved = ""
        if moved_from is not None:  # the email changed: the old calendar must not keep the event
            try:
                status = await self._delete(moved_from, event_id, recorder)
                gone = "was already gone" if status in GONE_STATUSES else "removed"
            except MailboxGone:
                gone = "went with the account"
            moved = f" (moved: the event {gone} from {moved_from}'s calendar)"
        if current is None:
            if wanted is not None:
                raise no_email(delivery)
            return DeliveryOutcome(summary=f"{NO_EMAIL}: no calendar to remove the event from{moved}")
        email = current
        if wanted is None:
            status = await self._delete(email, event_id, recorder)
            gone = "was already gone" if status in GONE_STATUSES else "removed"
            return DeliveryOutcome(
                summary=f"event {gone} from {email}'s calendar{moved}", external_id=event_id
            )
        events = self._require(self._service).events()
        body = self._event_body(event_id, wanted)
        insert = events.insert(calendarId=CALENDAR, body=body, sendUpdates="none")
        if await self._execute(insert, email, recorder, tolerate=(409,)) != 409:
            return DeliveryOutcome(
                summary=f"created event in {email}'s calendar{moved}", external_id=event_id
            )
        log.info(
            "google_event_replaced", calendar=log_mailbox(email), event_id=event_id
        )  # deleted earlier, or a repeat
        update = events.update(calendarId=CALENDAR, eventId=event_id, body=body, sendUpdates="none")
        await self._execute(update, email, recorder)
        return DeliveryOutcome(summary=f"updated event in {email}'s calendar{moved}", external_id=event_id)

    async def _delete(self, email: str, event_id: str, recorder: CallRecorder) -> int:
        """Deletes the event from ``email``'s calendar; returns the status (404/410: already gone)."""
        events = self._require(self._service).events()
        request = events.delete(calendarId=CALENDAR, eventId=event_id, sendUpdates="none")
        return await self._execute(request, email, recorder, tolerate=GONE_STATUSES)

    async def _execute(
        self, request: Any, email: str, recorder: CallRecorder, tolerate: tuple[int, ...] = ()
    ) -> int:
        """One Calendar call (a googleapiclient ``HttpRequest``) acting for ``email``: its own request,
        or its part of the current round's batch; returns its status (``tolerate``: not raised)."""
        if (batched := google_batching.in_round()) is not None:
            return await google_batching.call(self, batched, request, email, tolerate)
        http = AuthorizedHttp(self._for(email), http=self._http(recorder))
        return await self._run(lambda: request.execute(http=http), email, tolerate=tolerate)

    def _event_body(self, event_id: str, event: CalendarEvent) -> dict[str, Any]:
        """An out-of-office event; whole days as midnight-to-midnight (Google refuses all-day OOO)."""
        span = event.span
        ooo: dict[str, Any] = {"autoDeclineMode": self.auto_decline}
        if self.decline_message:
            ooo["declineMessage"] = self.decline_message
        return {
            "id": event_id,
            "summary": event.title,
            "eventType": "outOfOffice",
            "outOfOfficeProperties": ooo,
            "start": {"dateTime": span.start.isoformat(), "timeZone": span.time_zone},
            "end": {"dateTime": span.end.isoformat(), "timeZone": span.time_zone},
            "status": "tentative" if event.tentative else "confirmed",
            "visibility": "private" if event.private else "default",
            "transparency": "opaque",
            "reminders": {"useDefault": False},
            "extendedProperties": {"private": {"absyncAbsence": event.absence_tag}},
        }

    # -- credentials and calls ----------------------------------------------------------------
    def _base(self) -> service_account.Credentials:
        """The service account's credentials, read from the secret on first use."""
        if self._base_credentials is not None:
            return self._base_credentials
        try:
            info = json.loads(self.secret("service_account_json"))
            info["token_uri"] = self.token_uri
            self._base_credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=SCOPES
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(
                f"destination {self.destination.id}: service_account_json is not a service-account key file "
                f"({type(exc).__name__})"
            ) from None
        return self._base_credentials

    def _for(self, email: str) -> service_account.Credentials:
        """Delegated credentials for one user, kept so google-auth reuses the token until it expires."""
        if email not in self._delegated:
            self._delegated[email] = self._base().with_subject(email)  # type: ignore[no-untyped-call]
        return self._delegated[email]

    def _http(self, recorder: CallRecorder) -> _RecordingHttp:
        return _RecordingHttp(recorder, self.token_uri, self.options.timeout, self.options.egress)

    async def _run(self, call: Any, email: str, tolerate: tuple[int, ...] = ()) -> int:
        """Runs one sync Google call in a thread; returns its status, maps failures to our errors."""
        try:
            await self.run_blocking(call)
        except HttpError as exc:
            if exc.status_code in tolerate:
                return int(exc.status_code)
            raise _error_for(exc) from exc
        except google.auth.exceptions.RefreshError as exc:
            raise _token_error(exc, email) from exc
        except google.auth.exceptions.TransportError as exc:
            raise RetryableError(f"Google token endpoint unreachable: {exc}") from exc
        except (OSError, httplib2.HttpLib2Error) as exc:
            raise RetryableError(f"Google Calendar unreachable: {type(exc).__name__}: {exc}") from exc
        return 200

    # what connectors.google_batching uses
    def credentials_for(self, email: str) -> service_account.Credentials:
        return self._for(email)

    def recording_http(self, recorder: CallRecorder) -> httplib2.Http:
        return self._http(recorder)

    async def run_call(self, call: Any, email: str) -> int:
        return await self._run(call, email)

    @staticmethod
    def error_for(exc: HttpError) -> Exception:
        return _error_for(exc)

    def http_client(self) -> httpx.AsyncClient:
        return self._session.http_client()

    @staticmethod
    def _require(value: Any) -> Any:
        if value is None:
            raise RuntimeError("GoogleCalendarConnector.setup() was not awaited")
        return value


def _error_for(exc: HttpError) -> Exception:
    status = int(exc.status_code)
    reasons, message = _reasons(exc)
    detail = f"Google Calendar answered {status} {','.join(reasons)}: {message}"
    throttled = status == 403 and bool(set(reasons) & set(RATE_LIMIT_REASONS))
    return status_error(
        status, detail, retry_after=exc.resp.get("retry-after"), throttled=throttled, backpressure_statuses=()
    )


def _reasons(exc: HttpError) -> tuple[list[str], str]:
    try:
        error = json.loads(exc.content).get("error", {})
        return [str(e.get("reason", "")) for e in error.get("errors", [])], str(error.get("message", ""))
    except (ValueError, AttributeError, RecursionError):
        return [], exc.content.decode("utf-8", errors="replace")[:200]


def _token_error(exc: google.auth.exceptions.RefreshError, email: str) -> Exception:
    """Token errors: an unknown user is that delivery's problem; a refused delegation is the destination's."""
    data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    error, description = str(data.get("error", "")), str(data.get("error_description", exc))
    if error == "invalid_grant" and "Invalid email or User ID" in description:
        return MailboxGone(f"no Google account for {email} (token endpoint: invalid_grant: {description})")
    if getattr(exc, "retryable", False):
        return RetryableError(f"Google token endpoint failed: {description}")
    if error == "unauthorized_client":
        return ConfigurationError(
            f"domain-wide delegation missing: the service account may not act for {email} with scope "
            f"{SCOPES[0]} ({description})"
        )
    return ConfigurationError(f"Google refused the service account's token request: {error}: {description}")
