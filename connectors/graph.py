"""Office 365 calendars through Microsoft Graph (kind ``graph``).

Authentication: the client-credentials flow of an app registration with the application permission
Calendars.ReadWrite (admin consent), through msal. msal and its ``requests`` session are
synchronous, so they run on this destination's threads (:meth:`Connector.run_blocking`), and only
when a token is needed: the token is kept here with its expiry, so a delivery with a valid token
takes no thread at all. Graph itself is called with httpx.

Idempotency: each event carries a single-value extended property holding the absence tag. An upsert
first looks the event up by that property and PATCHes it; only when none exists does it POST, with
a ``transactionId`` derived from (destination, absence, version), so a create repeated after a lost
answer is discarded by Exchange. A later version gets a new transactionId: re-creating an absence
after its event was deleted must not be discarded as a repeat.

Batch mode (setting ``batch_requests: true``, off by default): concurrent deliveries share JSON
batches of 20 requests (:mod:`connectors.graph_batching`); each delivery still makes its own calls
in its own order and gets its own result.
"""

from __future__ import annotations

import contextvars
import ssl
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx
import msal
import requests
import structlog
from pydantic import SecretStr

from connectors import graph_batching
from connectors.base import CallRecorder, Connector, ConnectorOptions, DeliveryOutcome, pretty_json
from connectors.batching import BatchItem, ItemResult
from connectors.calendar import (
    NO_EMAIL,
    CalendarEvent,
    CalendarSettings,
    MailboxGone,
    absence_tag,
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
    secret,
    setting,
)
from connectors.egress import EgressPolicy
from connectors.egress_clients import GuardedAdapter
from connectors.exceptions import ConfigurationError, PermanentError, RetryableError
from connectors.registry import register
from connectors.wire import Answer, BatchSession, Shown, record, send_recorded, status_error
from schemas.delivery import Delivery
from schemas.destination import Destination

log = structlog.get_logger(__name__)

SCOPE = "https://graph.microsoft.com/.default"
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_GRAPH_BASE_URL = "https://graph.microsoft.com/v1.0"
PROPERTY_ID = "String {8d6d8a3e-5f7b-4b1e-9a57-2a3e0c1b6f41} Name absyncAbsence"
"""The extended property (a fixed GUID namespace of ours) that tags an event with its absence."""
TRANSACTION_NAMESPACE = uuid.UUID("0b4f8c9e-1f4e-4c4e-8a53-7f3c2b9d6e10")
NO_MAILBOX_CODES = ("ErrorInvalidUser", "MailboxNotEnabledForRESTAPI", "ResourceNotFound")
BACKPRESSURE_STATUSES = (429, 503, 504)
TEMPORARY_TOKEN_ERRORS = ("temporarily_unavailable", "server_error")
TOKEN_REFRESH_MARGIN = 300.0
"""A kept token is used until this many seconds before it expires (msal's own refresh margin)."""

_recorder: contextvars.ContextVar[CallRecorder | None] = contextvars.ContextVar(
    "graph_recorder", default=None
)


def transaction_id(destination_id: str, tag: str, version: int) -> str:
    """Graph's create-dedup key: the same for a repeated create, new for each absence version."""
    return str(uuid.uuid5(TRANSACTION_NAMESPACE, f"{destination_id}\x00{tag}\x00{version}"))


class _TokenSession(requests.Session):
    """msal's HTTP client: a timeout on every call, token calls recorded with their bodies masked."""

    def __init__(self, timeout: float, ca_bundle: str | None, egress: EgressPolicy) -> None:
        super().__init__()
        self.timeout = timeout
        # Every connection (OpenID discovery, token calls, redirects) goes through the egress policy.
        for prefix in ("https://", "http://"):
            self.mount(prefix, GuardedAdapter(egress))
        if ca_bundle:
            # requests prefers REQUESTS_CA_BUNDLE from the environment over ``verify`` unless told not
            # to read the environment: the configured bundle must win.
            self.trust_env = False
            self.verify = ca_bundle

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout)
        recorder = _recorder.get()
        if recorder is None:
            return super().request(method, url, *args, **kwargs)
        is_token = method.upper() == "POST"  # msal only POSTs to the token endpoint

        def shown(response: requests.Response) -> Shown:
            body = "<access token, masked>" if is_token and response.ok else response.text
            return response.status_code, dict(response.headers), body

        return record(
            recorder,
            method,
            url,
            {},
            "<client credentials, masked>" if is_token else "",
            lambda: super(_TokenSession, self).request(method, url, *args, **kwargs),
            shown,
            errors=(requests.RequestException,),
        )


class GraphSettings(CalendarSettingsModel):
    tenant_id: Any = setting("The Microsoft Entra tenant id (required).")
    client_id: Any = setting("The app registration's application (client) id (required).")
    authority_host: HttpUrlSetting = setting(f"The identity platform (default {DEFAULT_AUTHORITY_HOST}).")
    graph_base_url: HttpUrlSetting = setting(f"Graph's base URL (default {DEFAULT_GRAPH_BASE_URL}).")
    ca_bundle: Any = setting("A CA bundle (PEM file path) to trust instead of the system's.")
    batch_requests: Any = setting("Send concurrent deliveries' calls in JSON batches of 20 (default false).")


DECLARATION = KindDeclaration(
    kind="graph",
    label="Microsoft 365 calendar (Graph)",
    settings=GraphSettings,
    secrets=(secret("client_secret", "Client secret"),),
    form=(
        FormField("tenant_id", "Microsoft Entra tenant id", required=True),
        FormField("client_id", "Application (client) id", required=True),
        FormField("batch_requests", "Batch requests ($batch, 20 per call)", "checkbox"),
        *CALENDAR_FORM,
    ),
    endpoint_settings=("authority_host", "tenant_id", "graph_base_url", "ca_bundle"),
)


@register
class GraphConnector(Connector):
    """Keeps one out-of-office event per absence in the employee's Office 365 calendar."""

    declaration = DECLARATION

    def __init__(
        self,
        destination: Destination,
        secrets: Mapping[str, SecretStr],
        options: ConnectorOptions | None = None,
    ) -> None:
        super().__init__(destination, secrets, options)
        self.tenant_id: str = self.setting("tenant_id", required=True)
        self.client_id: str = self.setting("client_id", required=True)
        self.authority = (
            f"{str(self.setting('authority_host', DEFAULT_AUTHORITY_HOST)).rstrip('/')}/{self.tenant_id}"
        )
        self.base_url = str(self.setting("graph_base_url", DEFAULT_GRAPH_BASE_URL)).rstrip("/")
        self.ca_bundle: str | None = self.setting("ca_bundle")
        self.calendar = CalendarSettings.from_settings(self.settings)
        self._app: msal.ConfidentialClientApplication | None = None
        self._app_lock = threading.Lock()
        self._token_kept: tuple[str, float] | None = None
        """The last token and the monotonic time until which it is used."""
        self._session = BatchSession("GraphConnector", self.setting("batch_requests", False))

    async def setup(self) -> None:
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=self.ca_bundle) if self.ca_bundle else True
        )
        self._session.start(
            self.options,
            self.deliver_batch,
            max_items=graph_batching.MAX_REQUESTS,
            deadline=self.attempt_deadline,
            name=f"graph:{self.destination.id}",
            verify=verify,
        )

    async def close(self) -> None:
        await self._session.close()

    async def test_connection(self, recorder: CallRecorder) -> DeliveryOutcome:
        await self._token(recorder)
        return DeliveryOutcome(summary=f"token acquired for app {self.client_id} in tenant {self.tenant_id}")

    async def deliver(self, delivery: Delivery, recorder: CallRecorder) -> DeliveryOutcome:
        return await self._session.deliver(delivery, recorder, self.deliver_one)

    async def deliver_batch(self, items: Sequence[BatchItem]) -> list[ItemResult]:
        """The batch mode's MicroBatcher sender (see :mod:`connectors.graph_batching`)."""
        return await graph_batching.deliver_batch(self, items)

    async def deliver_one(self, delivery: Delivery, recorder: CallRecorder) -> DeliveryOutcome:
        """One delivery's calls, in order (each its own request, or its part of a round's batch)."""
        current, moved_from = mailboxes(delivery)
        wanted = wanted_event(delivery, self.calendar)
        tag = wanted.absence_tag if wanted else absence_tag(delivery.tenant, delivery.absence_id)
        moved = ""
        if moved_from is not None:  # the email changed: the old mailbox must not keep the event
            removed = await self._remove_all(moved_from, tag, recorder)
            moved = f" (moved: {removed} event(s) removed from {moved_from}'s calendar)"
        if current is None:
            if wanted is not None:
                raise no_email(delivery)
            return DeliveryOutcome(summary=f"{NO_EMAIL}: no calendar to remove the event from{moved}")
        email = current
        found = await self._find(email, tag, recorder)
        if wanted is None:
            for event_id in found:
                await self._delete(email, event_id, recorder)
            return DeliveryOutcome(summary=f"removed {len(found)} event(s) from {email}'s calendar{moved}")
        body = self._event_body(wanted)
        for duplicate in found[1:]:
            log.warning(
                "graph_duplicate_event_removed",
                mailbox=log_mailbox(email),
                absence_tag=tag,
                event_id=duplicate,
            )
            await self._delete(email, duplicate, recorder)
        if found:
            response = await self._call("PATCH", self._events_url(email, found[0]), email, recorder, body)
            if response.status_code != 404:
                return DeliveryOutcome(
                    summary=f"updated event in {email}'s calendar{moved}", external_id=found[0]
                )
        body["transactionId"] = transaction_id(self.destination.id, tag, delivery.version)
        body["singleValueExtendedProperties"] = [{"id": PROPERTY_ID, "value": tag}]
        response = await self._call("POST", self._events_url(email), email, recorder, body)
        event_id = str(response.json().get("id", ""))
        return DeliveryOutcome(summary=f"created event in {email}'s calendar{moved}", external_id=event_id)

    async def _remove_all(self, email: str, tag: str, recorder: CallRecorder) -> int:
        """Removes the absence's events from a mailbox it moved away from; a mailbox that no longer
        exists holds none."""
        try:
            found = await self._find(email, tag, recorder)
        except MailboxGone:
            return 0
        for event_id in found:
            await self._delete(email, event_id, recorder)
        return len(found)

    # -- Graph calls --------------------------------------------------------------------------
    def _events_url(self, email: str, event_id: str | None = None) -> str:
        url = f"{self.base_url}/users/{quote(email, safe='@')}/events"
        return f"{url}/{quote(event_id, safe='')}" if event_id else url

    def _event_body(self, event: CalendarEvent) -> dict[str, Any]:
        start, end = event.span.local_iso()
        return {
            "subject": event.title,
            "start": {"dateTime": start, "timeZone": event.span.time_zone},
            "end": {"dateTime": end, "timeZone": event.span.time_zone},
            "isAllDay": event.span.all_day,
            "showAs": event.show_as,
            "sensitivity": "private" if event.private else "normal",
            "isReminderOn": False,
        }

    async def _find(self, email: str, tag: str, recorder: CallRecorder) -> list[str]:
        """Ids of the events tagged with this absence (normally zero or one)."""
        condition = f"ep/id eq '{PROPERTY_ID}' and ep/value eq '{tag.replace(chr(39), chr(39) * 2)}'"
        params = {
            "$filter": f"singleValueExtendedProperties/any(ep: {condition})",
            "$expand": f"singleValueExtendedProperties($filter=id eq '{PROPERTY_ID}')",
            "$select": "id",
        }
        response = await self._call("GET", self._events_url(email), email, recorder, params=params)
        return [str(item["id"]) for item in response.json().get("value", [])]

    async def _delete(self, email: str, event_id: str, recorder: CallRecorder) -> None:
        await self._call("DELETE", self._events_url(email, event_id), email, recorder)

    async def _call(
        self,
        method: str,
        url: str,
        email: str,
        recorder: CallRecorder,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> Answer:
        """One Graph call, recorded; returns 2xx answers and a 404 on one event, raises otherwise."""
        client = self.http_client()
        token = await self._token(recorder)
        request = client.build_request(
            method,
            url,
            params=params,
            content=pretty_json(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        response: Answer
        if (batched := graph_batching.in_round()) is not None:
            response = await graph_batching.call(batched, self.base_url, request, email)
        else:
            try:
                response = await send_recorded(
                    client,
                    request,
                    recorder,
                    limit=None,
                    error_text=lambda exc: f"{method} {url}: {type(exc).__name__}: {exc}",
                )
            except httpx.TransportError as exc:
                raise RetryableError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        if response.is_success:
            return response
        code, message = _graph_error(response)
        if response.status_code == 404 and code not in NO_MAILBOX_CODES and "/events/" in url:
            return response  # that one event is gone: the caller decides (delete = done)
        raise _error_for(response.status_code, code, message, email, response.headers.get("Retry-After"))

    def http_client(self) -> httpx.AsyncClient:
        return self._session.http_client()

    async def bearer_token(self, recorder: CallRecorder) -> str:
        return await self._token(recorder)

    async def _token(self, recorder: CallRecorder) -> str:
        """The kept token while it is valid (no thread, no I/O), else msal's, on this destination's
        threads."""
        kept = self._token_kept
        if kept is not None and time.monotonic() < kept[1]:
            return kept[0]
        token = _recorder.set(recorder)
        try:
            result = await self.run_blocking(self._acquire_token)
        except requests.RequestException as exc:
            raise RetryableError(
                f"token endpoint of {self.authority} unreachable: {type(exc).__name__}"
            ) from exc
        finally:
            _recorder.reset(token)
        if "access_token" in result:
            access_token = str(result["access_token"])
            expires_in = result.get("expires_in")
            if isinstance(expires_in, int | float) and expires_in > TOKEN_REFRESH_MARGIN:
                self._token_kept = (access_token, time.monotonic() + expires_in - TOKEN_REFRESH_MARGIN)
            return access_token
        error = str(result.get("error", "unknown_error"))
        description = (
            str(result.get("error_description", "")).splitlines()[0]
            if result.get("error_description")
            else ""
        )
        message = (
            f"Microsoft identity platform refused a token for app {self.client_id}: {error} {description}"
        )
        if error in TEMPORARY_TOKEN_ERRORS:
            raise RetryableError(message)
        raise ConfigurationError(message)

    def _acquire_token(self) -> dict[str, Any]:
        with self._app_lock:  # the first deliveries may arrive together: build one msal app
            app = self._app or self._new_app()
            self._app = app
        result: dict[str, Any] = app.acquire_token_for_client(scopes=[SCOPE])
        return result

    def _new_app(self) -> msal.ConfidentialClientApplication:
        """msal's app (it reads the authority's OpenID configuration: I/O, so never in __init__)."""
        try:
            return msal.ConfidentialClientApplication(
                self.client_id,
                client_credential=self.secret("client_secret"),
                authority=self.authority,
                instance_discovery=self.authority.startswith(DEFAULT_AUTHORITY_HOST),
                http_client=_TokenSession(self.options.timeout, self.ca_bundle, self.options.egress),
            )
        except ValueError as exc:
            raise ConfigurationError(f"authority {self.authority} is not usable: {exc}") from exc


def _graph_error(response: Answer) -> tuple[str, str]:
    try:
        error = response.json().get("error", {})
        return str(error.get("code", "")), str(error.get("message", ""))
    except (ValueError, AttributeError, RecursionError):
        return "", response.text[:200]


def _error_for(status: int, code: str, message: str, email: str, retry_after: str | None) -> Exception:
    """The connector error for a failed Graph answer (see connectors.exceptions and connectors.wire)."""
    detail = f"Graph answered {status} {code}: {message}".strip()
    error = status_error(status, detail, retry_after=retry_after, backpressure_statuses=BACKPRESSURE_STATUSES)
    if not isinstance(error, PermanentError):
        return error
    if status == 404 and code in NO_MAILBOX_CODES:
        return MailboxGone(f"no mailbox for {email} ({detail})", status_code=status)
    if status in (401, 403):
        return PermanentError(
            f"access to {email}'s calendar refused ({detail}): check the application permission "
            "Calendars.ReadWrite, its admin consent and the mailboxes the app may reach",
            status_code=status,
        )
    return error
