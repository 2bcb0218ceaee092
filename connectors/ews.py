"""Exchange on-premises connector: absences as calendar items over EWS, with exchangelib.

One service account impersonates each employee's mailbox (the ApplicationImpersonation role, see
docs/connectors/ews.md). Every item we create carries a custom extended property holding the
absence tag (:func:`connectors.calendar.absence_tag`), so a delivery finds "its" item again with
one ``FindItem`` and updates it in place; a repeated delivery therefore has no second effect
(a create whose response was lost is found and updated by the retry).

exchangelib is synchronous: each delivery runs on one of this destination's own threads, as many
as its ``max_connections`` (:mod:`connectors.executor`), with a session pool of the same size that
never shrinks (:mod:`connectors.ews_protocol`: exchangelib 5.6 deadlocks when it shrinks the pool
under throttling). exchangelib's own retry-on-busy is off (``FailFast``) and nothing sleeps in a
thread. When Exchange throttles:

- ``ErrorServerBusy`` with ``BackOffMilliseconds``: a :class:`BackpressureError` whose
  ``retry_after`` is Exchange's back-off; the delivery goes to the next retry topic, due no
  earlier than that;
- ``ErrorServerBusy`` without it, or an HTTP 503 (with ``Retry-After``: honoured the same way): the
  normal retry ladder;
- a call stuck past the attempt deadline frees its lane; its thread is abandoned (bounded).

Calls are recorded by an HTTP adapter that reads the delivery's recorder from a context variable
(the executor copies the caller's context into the thread).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import requests
import structlog
from exchangelib import (
    IMPERSONATION,
    UTC,
    Account,
    Build,
    CalendarItem,
    Configuration,
    Credentials,
    EWSDateTime,
    ExtendedProperty,
    FailFast,
    Version,
)
from exchangelib import errors as ews_errors
from exchangelib.fields import InvalidField
from exchangelib.items import SEND_TO_NONE
from exchangelib.protocol import BaseProtocol, Protocol
from pydantic import SecretStr

from connectors.base import CallRecorder, Connector, ConnectorOptions, DeliveryOutcome
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
from connectors.egress_clients import GuardedAdapter, bind_policy, unbind_policy
from connectors.ews_protocol import NoSessionAvailable, ThrottleSafeProtocol
from connectors.exceptions import (
    BackpressureError,
    ConfigurationError,
    ConnectorError,
    PermanentError,
    RetryableError,
)
from connectors.registry import register
from connectors.wire import parse_retry_after, record
from schemas.delivery import Delivery
from schemas.destination import Destination

log = structlog.get_logger(__name__)

AUTH_TYPES = {"ntlm": "NTLM", "basic": "basic"}
SERVER_VERSIONS = {
    "Exchange2010_SP2": Build(14, 2),
    "Exchange2013": Build(15, 0),
    "Exchange2013_SP1": Build(15, 0, 847),
    "Exchange2016": Build(15, 1),
    "Exchange2019": Build(15, 2),
}
DEFAULT_MAX_CONNECTIONS = 4
ACCOUNT_CACHE_SIZE = 1024
# The fields an update rewrites; exchangelib adds the start/end time zones by itself.
UPDATE_FIELDS = [
    "subject",
    "start",
    "end",
    "is_all_day",
    "legacy_free_busy_status",
    "sensitivity",
    "reminder_is_set",
]

_MISSING_MAILBOX = (
    ews_errors.ErrorNonExistentMailbox,
    ews_errors.ErrorInvalidSmtpAddress,
    ews_errors.ErrorMailRecipientNotFound,
)
_IMPERSONATION_DENIED = (ews_errors.ErrorImpersonateUserDenied, ews_errors.ErrorImpersonationDenied)
_TRANSIENT = (
    ews_errors.ErrorTimeoutExpired,
    ews_errors.ErrorInternalServerTransientError,
    ews_errors.ErrorInternalServerError,
    ews_errors.ErrorMailboxStoreUnavailable,
    ews_errors.ErrorMailboxMoveInProgress,
    ews_errors.ErrorConnectionFailed,
    ews_errors.ErrorConnectionFailedTransientError,
    ews_errors.ErrorTooManyObjectsOpened,
    ews_errors.ErrorExceededConnectionCount,
    ews_errors.ErrorADUnavailable,
    ews_errors.CASError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
)


class AbsenceTagProperty(ExtendedProperty):  # type: ignore[misc]
    """The MAPI named property holding the absence tag on every item absync creates."""

    property_set_id = "5d3c9a7e-8f1b-4c2a-9e6d-0b7a1c4f2e83"  # absync's own property set
    property_name = "AbsyncAbsenceTag"
    property_type = "String"


TAG_FIELD = "absync_absence_tag"

_current_recorder: contextvars.ContextVar[CallRecorder | None] = contextvars.ContextVar(
    "absync_ews_recorder", default=None
)


class RecordingAdapter(GuardedAdapter):
    """exchangelib's HTTP adapter, recording each exchange in the current delivery's recorder.

    exchangelib builds it itself (no argument for our policy): its connections obey the egress
    policy bound to the calling context by :meth:`EwsConnector._in_thread` (production's if none).

    Headers are masked by the recorder (Authorization never recorded) and bodies scrubbed of the
    destination's secrets; outside a delivery (no recorder) it is a plain adapter.
    """

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float | None, float | None] | None = None,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        recorder = _current_recorder.get()

        def send() -> requests.Response:
            return super(RecordingAdapter, self).send(
                request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
            )

        if recorder is None:
            return send()
        headers = {k: v if isinstance(v, str) else v.decode("latin-1") for k, v in request.headers.items()}
        body = request.body if isinstance(request.body, str | bytes) else None
        return record(
            recorder,
            request.method or "POST",
            request.url or "",
            headers,
            body,
            send,
            lambda response: (response.status_code, response.headers, None if stream else response.content),
        )


def _install_exchangelib_hooks() -> None:
    """Process-wide exchangelib set-up, idempotent: our adapter, our tag property, quiet logs.

    exchangelib logs request headers (Basic credentials included) at DEBUG: its logger is kept at
    INFO or above so a debug log level never writes a password.
    """
    BaseProtocol.HTTP_ADAPTER_CLS = RecordingAdapter
    try:
        CalendarItem.get_field_by_fieldname(TAG_FIELD)
    except InvalidField:
        CalendarItem.register(TAG_FIELD, AbsenceTagProperty)
    ews_logger = logging.getLogger("exchangelib")
    ews_logger.setLevel(max(ews_logger.getEffectiveLevel(), logging.INFO))


class EwsSettings(CalendarSettingsModel):
    server_url: HttpUrlSetting = setting(
        "The EWS endpoint, https://mail.example.com/EWS/Exchange.asmx (required)."
    )
    username: Any = setting("The service account, DOMAIN\\user or user@domain (required).")
    auth_type: Any = setting("NTLM (default) or basic.")
    server_version: Any = setting("e.g. Exchange2016 (default).")
    test_mailbox: Any = setting("A mailbox for the connection test (proves impersonation).")
    max_connections: Any = setting("Connections (and threads) to Exchange.")


DECLARATION = KindDeclaration(
    kind="ews",
    label="Exchange calendar (EWS)",
    settings=EwsSettings,
    secrets=(secret("password", "Service account password"),),
    form=(
        FormField(
            "server_url", "EWS URL", "url", required=True, help="https://mail.example.com/EWS/Exchange.asmx"
        ),
        FormField("username", "Service account", required=True, help="DOMAIN\\user or user@domain."),
        FormField("auth_type", "Authentication", "select", options=("NTLM", "basic")),
        FormField("server_version", "Server version", help="e.g. Exchange2016."),
        FormField("test_mailbox", "Mailbox for the connection test"),
        *CALENDAR_FORM,
    ),
    endpoint_settings=("server_url",),
)


@register
class EwsConnector(Connector):
    """Keeps one calendar item per absence in the employee's Exchange mailbox."""

    declaration = DECLARATION

    def __init__(
        self,
        destination: Destination,
        secrets: Mapping[str, SecretStr],
        options: ConnectorOptions | None = None,
    ) -> None:
        super().__init__(destination, secrets, options)
        self.server_url = str(self.setting("server_url", required=True))
        if not self.server_url.startswith(("https://", "http://")):
            raise ConfigurationError(f"setting 'server_url' must be an http(s) URL, got {self.server_url!r}")
        auth_type = str(self.setting("auth_type", "NTLM"))
        if auth_type.lower() not in AUTH_TYPES:
            raise ConfigurationError(f"setting 'auth_type' must be NTLM or basic, got {auth_type!r}")
        self.auth_type = AUTH_TYPES[auth_type.lower()]
        version = str(self.setting("server_version", "Exchange2016"))
        if version not in SERVER_VERSIONS:
            raise ConfigurationError(
                f"setting 'server_version' must be one of {', '.join(SERVER_VERSIONS)}, got {version!r}"
            )
        self.build = SERVER_VERSIONS[version]
        self.username = str(self.setting("username", required=True))
        self.max_connections = self.count_setting("max_connections", DEFAULT_MAX_CONNECTIONS)
        self.blocking_threads = self.max_connections  # one thread per EWS session, no more
        self.test_mailbox: str | None = self.setting("test_mailbox")
        self.calendar = CalendarSettings.from_settings(self.settings)
        self._config: Configuration | None = None
        self._protocol: ThrottleSafeProtocol | None = None
        self._accounts: OrderedDict[str, Account] = OrderedDict()
        self._accounts_lock = threading.Lock()

    async def setup(self) -> None:
        _install_exchangelib_hooks()
        self._config = Configuration(
            service_endpoint=self.server_url,
            credentials=Credentials(self.username, self.secret("password")),
            auth_type=self.auth_type,
            version=Version(build=self.build),
            retry_policy=FailFast(),
            max_connections=self.max_connections,
        )
        self._protocol = ThrottleSafeProtocol.build(self._config, timeout=self.options.timeout)

    async def deliver(self, delivery: Delivery, recorder: CallRecorder) -> DeliveryOutcome:
        current, moved_from = mailboxes(delivery)
        wanted = wanted_event(delivery, self.calendar)
        tag = wanted.absence_tag if wanted else absence_tag(delivery.tenant, delivery.absence_id)
        moved = ""
        if moved_from is not None:  # the email changed: the old mailbox must not keep the item
            try:
                removed = await self._in_thread(recorder, moved_from, self._sync_item, moved_from, tag, None)
                moved = f" (moved: {removed.summary})"
            except MailboxGone:
                moved = f" (moved: {moved_from} has no mailbox any more)"
        if current is None:
            if wanted is not None:
                raise no_email(delivery)
            return DeliveryOutcome(summary=f"{NO_EMAIL}: no mailbox to remove the item from{moved}")
        outcome = await self._in_thread(recorder, current, self._sync_item, current, tag, wanted)
        outcome.summary += moved
        return outcome

    async def test_connection(self, recorder: CallRecorder) -> DeliveryOutcome:
        mailbox = self.test_mailbox or (self.username if "@" in self.username else None)
        if mailbox is None:
            return DeliveryOutcome(summary="set 'test_mailbox' (an email address) to test this destination")
        return await self._in_thread(recorder, mailbox, self._open_calendar, mailbox)

    async def close(self) -> None:
        """Closes the idle HTTP sessions of this destination (a call still running keeps its own)."""
        with self._accounts_lock:
            self._accounts.clear()
        if self._protocol is not None:
            self._protocol.close()  # closes sockets: no I/O wait

    # -- in the worker thread ------------------------------------------------------------------
    async def _in_thread(
        self, recorder: CallRecorder, mailbox: str, func: Callable[..., DeliveryOutcome], *args: Any
    ) -> DeliveryOutcome:
        """Runs ``func`` on this destination's threads with ``recorder`` receiving its calls;
        translates its errors."""
        token = _current_recorder.set(recorder)
        policy = bind_policy(self.options.egress)
        try:
            return await self.run_blocking(func, *args)
        except (ews_errors.EWSError, requests.exceptions.RequestException) as exc:
            raise self._translate(exc, recorder, mailbox) from exc
        except NoSessionAvailable as exc:
            raise RetryableError(f"Exchange sessions all busy, will retry ({exc})") from exc
        finally:
            unbind_policy(policy)
            _current_recorder.reset(token)

    def _account(self, email: str) -> Account:
        """The impersonated mailbox; cached (LRU) so its calendar folder is looked up once."""
        if self._config is None or self._protocol is None:
            raise RuntimeError("EwsConnector.setup() was not awaited")
        key = email.lower()
        with self._accounts_lock:  # deliveries of several keys run in several threads
            account = self._accounts.get(key)
            if account is None:
                account = Account(
                    primary_smtp_address=email,
                    config=self._config,
                    autodiscover=False,
                    access_type=IMPERSONATION,
                    default_timezone=UTC,  # not the host's zone: every time we send carries its own
                )
                # Account() fetched a shared Protocol from exchangelib's cache: use this
                # destination's own, and leave nothing in the cache.
                account.protocol = self._protocol
                with contextlib.suppress(KeyError):
                    del Protocol[self._config]
                self._accounts[key] = account
                while len(self._accounts) > ACCOUNT_CACHE_SIZE:
                    self._accounts.popitem(last=False)
            self._accounts.move_to_end(key)
            return account

    def _open_calendar(self, email: str) -> DeliveryOutcome:
        folder = self._account(email).calendar
        return DeliveryOutcome(summary=f"calendar of {email} reachable", details={"folder": folder.name})

    def _sync_item(self, email: str, tag: str, wanted: CalendarEvent | None) -> DeliveryOutcome:
        """Makes the mailbox hold exactly ``wanted`` (or no item) for ``tag``."""
        account = self._account(email)
        calendar = account.calendar
        found: list[tuple[str, str]] = list(
            calendar.filter(**{TAG_FIELD: tag}).values_list("id", "changekey")
        )
        if wanted is None:
            for item_id, changekey in found:
                self._delete(account, calendar, item_id, changekey)
            summary = (
                f"deleted the calendar item in {email}"
                if found
                else f"no calendar item in {email} (already gone)"
            )
            return DeliveryOutcome(summary=summary, external_id=found[0][0] if found else None)
        fields = self._fields(wanted)
        if not found:
            item = CalendarItem(account=account, folder=calendar, **fields, **{TAG_FIELD: tag})
            item.save(send_meeting_invitations=SEND_TO_NONE)
            log.info("ews item created", mailbox=log_mailbox(email), absence_tag=tag)
            return DeliveryOutcome(summary=f"created the calendar item in {email}", external_id=item.id)
        (item_id, changekey), duplicates = found[0], found[1:]
        item = CalendarItem(account=account, folder=calendar, id=item_id, changekey=changekey, **fields)
        item.save(update_fields=UPDATE_FIELDS, send_meeting_invitations=SEND_TO_NONE)
        for duplicate_id, duplicate_changekey in duplicates:
            self._delete(account, calendar, duplicate_id, duplicate_changekey)
        return DeliveryOutcome(
            summary=f"updated the calendar item in {email}",
            external_id=item_id,
            details={"duplicates_removed": len(duplicates)} if duplicates else {},
        )

    @staticmethod
    def _fields(wanted: CalendarEvent) -> dict[str, Any]:
        span = wanted.span
        return {
            "subject": wanted.title,
            "start": EWSDateTime.from_datetime(span.start),
            "end": EWSDateTime.from_datetime(span.end),
            "is_all_day": span.all_day,
            "legacy_free_busy_status": "Tentative" if wanted.tentative else "OOF",
            "sensitivity": "Private" if wanted.private else "Normal",
            "reminder_is_set": False,
        }

    @staticmethod
    def _delete(account: Account, calendar: Any, item_id: str, changekey: str) -> None:
        """Hard-deletes one item without notifying anyone; an item already gone is fine."""
        item = CalendarItem(account=account, folder=calendar, id=item_id, changekey=changekey)
        with contextlib.suppress(ews_errors.ErrorItemNotFound):
            item.delete(send_meeting_cancellations=SEND_TO_NONE)

    # -- errors ---------------------------------------------------------------------------------
    def _translate(self, exc: Exception, recorder: CallRecorder, mailbox: str) -> ConnectorError:
        """An exchangelib (or requests) failure as the connector exception the processor acts on."""
        if isinstance(exc, ews_errors.ErrorServerBusy) and isinstance(exc.__context__, _TRANSIENT):
            # exchangelib re-raises a 503 or a dropped connection as ErrorServerBusy with a back-off
            # of its own invention: judge the original failure instead.
            exc = exc.__context__
        status = recorder.calls[-1].response_status if recorder.calls else None  # the call that failed
        detail = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ews_errors.ErrorServerBusy):
            # ThrottleSafeProtocol makes exchangelib's invented back-off 0: a back-off is Exchange's.
            back_off = exc.back_off or None
            return BackpressureError(
                f"Exchange is busy (ErrorServerBusy), asks to back off {back_off:g} s"
                if back_off
                else "Exchange is busy (ErrorServerBusy), no back-off given: normal retry ladder",
                retry_after=back_off,
                status_code=status,
            )
        if status == 503:
            retry_after = _retry_after(recorder)
            if retry_after is not None:
                return BackpressureError(
                    f"Exchange is unavailable (HTTP 503), asks to retry after {retry_after:g} s",
                    retry_after=retry_after,
                    status_code=status,
                )
        if isinstance(exc, _MISSING_MAILBOX):
            return MailboxGone(f"no mailbox for {mailbox} ({detail})", status_code=status)
        if isinstance(exc, _IMPERSONATION_DENIED):
            return ConfigurationError(
                f"the service account {self.username} may not impersonate {mailbox}: assign it the "
                f"ApplicationImpersonation management role with a scope that includes this mailbox ({detail})",
                status_code=status,
            )
        if isinstance(exc, ews_errors.UnauthorizedError) or status == 401:
            return ConfigurationError(
                f"Exchange rejected the credentials of {self.username} (HTTP 401): check username, "
                f"password and auth_type ({self.auth_type})",
                status_code=401,
            )
        if isinstance(exc, ews_errors.ErrorAccessDenied):
            return ConfigurationError(
                f"access denied to the calendar of {mailbox} ({detail})", status_code=status
            )
        if isinstance(exc, ews_errors.RedirectError):
            return ConfigurationError(
                f"{self.server_url} redirects to {exc.url}: set server_url to the EWS endpoint",
                status_code=status,
            )
        if isinstance(exc, ews_errors.UnknownTimeZone):
            return PermanentError(f"Exchange has no Windows time zone for this absence ({detail})")
        if isinstance(exc, _TRANSIENT) or (status is not None and status >= 500):
            return RetryableError(f"Exchange call failed, will retry ({detail})", status_code=status)
        if isinstance(exc, ews_errors.ResponseMessageError):
            return PermanentError(f"Exchange refused the request ({detail})", status_code=status)
        if status is not None and 400 <= status < 500:
            return PermanentError(f"Exchange answered HTTP {status} ({detail})", status_code=status)
        # No HTTP status at all: the server was not reached (TLS failure, name resolution...).
        return RetryableError(f"could not reach Exchange at {self.server_url} ({detail})", status_code=status)


def _retry_after(recorder: CallRecorder) -> float | None:
    """The failed call's ``Retry-After`` in seconds (:func:`connectors.wire.parse_retry_after`), if it
    sent one asking for a wait (0 means "now": the normal retry ladder)."""
    if not recorder.calls:
        return None
    headers = {k.lower(): v for k, v in recorder.calls[-1].response_headers.items()}
    return parse_retry_after(headers.get("retry-after")) or None
