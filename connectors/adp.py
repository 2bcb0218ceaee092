"""ADP payroll (kind ``adp``): approved absences become ADP leaves of absence, as they happen.

Authentication is ADP's API Central / Marketplace model: OAuth 2.0 client credentials *over mutual
TLS*. The ADP-signed client certificate and its key are destination secrets (``client_cert_pem``,
``client_key_pem``, optional ``client_key_password``) with ``client_secret``; they are presented on
the token call and on every API call. The PEM is loaded into an :class:`ssl.SSLContext` through a
private temporary directory (0700, files 0600) that is removed as soon as the context holds them: the
key never stays on disk. The bearer token is cached until shortly before ``expires_in`` and renewed
then, or once when the API answers 401.

What is sent (ADP's events model):

* an approved absence (created approved, approved) -> ``worker.leave.absence.request``;
* an update of an approved absence -> ``worker.leave.cancel`` then ``worker.leave.absence.request``
  (ADP has no "modify leave" event). The cancel names the leave by its start date, which is the
  *current* one: the connector only sees the latest state, so when the start date itself moved, the
  leave at the old start date stays in ADP and must be cancelled there (see docs/connectors/adp.md);
* a cancellation or deletion (operation DELETE), or an update back to pending -> ``worker.leave.cancel``;
  a cancel ADP answers 404 (no such leave: it was never approved, or is already cancelled) is a success;
* a pending absence created -> nothing (ADP only holds approved leaves).

A request repeated after a lost answer is refused by ADP as an overlapping leave (a validation error
an operator sees), never doubled.

The paths and payloads are settings with ADP's public model as default (:data:`DEFAULT_ENDPOINTS`,
:data:`DEFAULT_TEMPLATES`): ADP GXP, ADP's French payroll, publishes no open interface, so a GXP
integration supplies its own paths and templates; the placeholders are listed in :func:`variables`.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import structlog
from pydantic import SecretStr

from connectors.adp_payloads import DEFAULT_ENDPOINTS, DEFAULT_TEMPLATES, render, variables
from connectors.base import CallRecorder, Connector, ConnectorOptions, DeliveryOutcome, pretty_json
from connectors.declaration import FormField, HttpUrlSetting, KindDeclaration, KindSettings, secret, setting
from connectors.egress_clients import guarded_client
from connectors.exceptions import ConfigurationError, ConnectorError, PermanentError, RetryableError
from connectors.registry import register
from connectors.wire import Answer, send_recorded, status_error
from schemas.delivery import Delivery, Operation
from schemas.destination import Destination
from schemas.models import AbsenceEvent, AbsenceStatus, ChangeKind
from streams.logging import MASK

log = structlog.get_logger(__name__)

DEFAULT_TOKEN_URL = "https://accounts.adp.com/auth/oauth/v2/token"
DEFAULT_API_BASE_URL = "https://api.adp.com"
TOKEN_MARGIN = 60.0
"""Seconds before ``expires_in`` at which a cached token is renewed (a tenth of a short lifetime)."""
BACKPRESSURE_STATUSES = (429, 503)
NO_CERTIFICATE = "Proper client SSL certificate was not presented"


@dataclass
class _Token:
    value: str
    renew_at: float


class AdpSettings(KindSettings):
    client_id: Any = setting("ADP's client id (required).")
    token_url: HttpUrlSetting = setting(f"The token endpoint (default {DEFAULT_TOKEN_URL}).")
    api_base_url: HttpUrlSetting = setting(f"The API base URL (default {DEFAULT_API_BASE_URL}).")
    ca_bundle: Any = setting("A CA bundle (PEM file path) to trust instead of the system's.")
    mutual_tls: Any = setting("Present the client certificate (default true).")
    leave_codes: Any = setting("Leave account (or category) id -> ADP leave code.")
    associates: Any = setting("Employee id -> ADP associateOID.")
    associates_by_employee_number: Any = setting("Employee number -> ADP associateOID.")
    work_assignment_ids: Any = setting("Employee id (or associateOID) -> work assignment id.")
    endpoints: Any = setting("Operation (request, cancel) -> path or https URL.")
    templates: Any = setting("Operation -> payload template (placeholders: connectors.adp.variables).")


DECLARATION = KindDeclaration(
    kind="adp",
    label="ADP Workforce Now",
    settings=AdpSettings,
    secrets=(
        secret("client_secret", "Client secret"),
        secret("client_cert_pem", "Client certificate (PEM)", multiline=True),
        secret("client_key_pem", "Client private key (PEM)", multiline=True),
        secret("client_key_password", "Private key password"),
    ),
    form=(
        FormField("client_id", "Client id", required=True),
        FormField("token_url", "Token URL", "url"),
        FormField("api_base_url", "API base URL", "url"),
        FormField("mutual_tls", "Use the client certificate (mutual TLS)", "checkbox"),
    ),
    endpoint_settings=("token_url", "api_base_url", "endpoints", "ca_bundle"),
)


@register
class AdpConnector(Connector):
    """Sends approved absences to ADP as leaves of absence and cancels them."""

    declaration = DECLARATION

    def __init__(
        self,
        destination: Destination,
        secrets: Mapping[str, SecretStr],
        options: ConnectorOptions | None = None,
    ) -> None:
        super().__init__(destination, secrets, options)
        self.client_id: str = self.setting("client_id", required=True)
        self.token_url = str(self.setting("token_url", DEFAULT_TOKEN_URL))
        self.api_base_url = str(self.setting("api_base_url", DEFAULT_API_BASE_URL)).rstrip("/")
        self.ca_bundle: str | None = self.setting("ca_bundle")
        self.mutual_tls = bool(self.setting("mutual_tls", True))
        self.leave_codes: dict[str, str] = self._mapping("leave_codes")
        self.associates: dict[str, str] = self._mapping("associates")
        self.associates_by_number: dict[str, str] = self._mapping("associates_by_employee_number")
        self.work_assignment_ids: dict[str, str] = self._mapping("work_assignment_ids")
        self.endpoints = {**DEFAULT_ENDPOINTS, **self._mapping("endpoints")}
        self.templates: dict[str, Any] = {**DEFAULT_TEMPLATES, **(self.setting("templates") or {})}
        self._client: httpx.AsyncClient | None = None
        self._token: _Token | None = None
        self._token_lock = asyncio.Lock()

    def _mapping(self, name: str) -> dict[str, str]:
        value = self.setting(name) or {}
        if not isinstance(value, dict):
            raise ConfigurationError(f"destination {self.destination.id}: setting {name!r} must be a mapping")
        return {str(k): str(v) for k, v in value.items()}

    async def setup(self) -> None:
        self._client = guarded_client(
            self.options.egress,
            timeout=httpx.Timeout(self.options.timeout),
            verify=self._ssl_context(),
            headers={"User-Agent": self.options.user_agent, "Accept": "application/json"},
        )

    def _ssl_context(self) -> ssl.SSLContext:
        """Server verification plus, for mutual TLS, the client certificate loaded from the secrets."""
        context = ssl.create_default_context(cafile=self.ca_bundle)
        if not self.mutual_tls:
            return context
        cert, key = self.secret("client_cert_pem"), self.secret("client_key_pem")
        password = self.secrets.get("client_key_password")
        with tempfile.TemporaryDirectory(prefix="absync-adp-") as folder:
            cert_file, key_file = Path(folder) / "cert.pem", Path(folder) / "key.pem"
            for path, text in ((cert_file, cert), (key_file, key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(text)
            try:
                context.load_cert_chain(
                    cert_file, key_file, password=password.get_secret_value() if password else None
                )
            except (ssl.SSLError, ValueError) as exc:
                raise ConfigurationError(
                    f"destination {self.destination.id}: the client certificate or key is not usable "
                    f"({exc.__class__.__name__}); give the ADP-signed certificate and its private key in PEM"
                ) from None
        return context

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def test_connection(self, recorder: CallRecorder) -> DeliveryOutcome:
        await self._access_token(recorder)
        return DeliveryOutcome(summary=f"token acquired for ADP client {self.client_id}")

    async def deliver(self, delivery: Delivery, recorder: CallRecorder) -> DeliveryOutcome:
        event = delivery.event
        absence = event.absence
        if delivery.operation == Operation.DELETE or absence.status.removed:
            return await self._cancel(event, recorder)
        if absence.status != AbsenceStatus.APPROVED:
            if event.change == ChangeKind.UPDATED:
                return await self._cancel(event, recorder)  # it may have been approved: ADP must not pay it
            return DeliveryOutcome(summary="pending: nothing sent")
        values = self._values(event)
        if event.change == ChangeKind.UPDATED:
            await self._send("cancel", values, recorder, missing_ok=True)
        response = await self._send("request", values, recorder)
        return DeliveryOutcome(
            summary=f"leave {values['leave_code']} sent to ADP for associate {values['associate_oid']}"
            + (" (previous leave cancelled)" if event.change == ChangeKind.UPDATED else ""),
            external_id=_event_id(response),
        )

    async def _cancel(self, event: AbsenceEvent, recorder: CallRecorder) -> DeliveryOutcome:
        values = self._values(event, need_code=False)
        response = await self._send("cancel", values, recorder, missing_ok=True)
        if response.status_code == 404:
            return DeliveryOutcome(summary="no such leave in ADP: nothing to cancel")
        return DeliveryOutcome(
            summary=f"leave of {values['start_date']} cancelled in ADP for associate {values['associate_oid']}",
            external_id=_event_id(response),
        )

    # -- mapping ------------------------------------------------------------------------------
    def _values(self, event: AbsenceEvent, *, need_code: bool = True) -> dict[str, str | None]:
        """Template values; raises ConfigurationError naming the missing leave code or associate.

        A cancel does not need the leave code (ADP names the leave by associate and start date).
        """
        la, employee = event.absence.leave_account, event.employee
        code = self.leave_codes.get(la.id) or (
            self.leave_codes.get(la.category_id) if la.category_id else None
        )
        if code is None and need_code:
            category = f", category {la.category_name!r} (id {la.category_id})" if la.category_id else ""
            raise ConfigurationError(
                f"no ADP leave code for leave account {la.name!r} (id {la.id}){category}; add it to leave_codes"
            )
        number = employee.employee_number
        aoid = self.associates.get(employee.id) or (self.associates_by_number.get(number) if number else None)
        if aoid is None:
            raise ConfigurationError(
                f"no ADP associateOID for employee {employee.display_name!r} (id {employee.id}, employee number "
                f"{number or 'none'}); add it to associates_by_employee_number (or associates by employee id)"
            )
        assignment = self.work_assignment_ids.get(employee.id) or self.work_assignment_ids.get(aoid)
        return variables(event, aoid, assignment, code)

    # -- ADP calls ----------------------------------------------------------------------------
    async def _send(
        self,
        operation: str,
        values: Mapping[str, str | None],
        recorder: CallRecorder,
        *,
        missing_ok: bool = False,
    ) -> Answer:
        """POSTs one rendered event; renews the token once on 401; returns a 2xx (or a 404 if missing_ok)."""
        path = self.endpoints.get(operation)
        if not path:
            raise ConfigurationError(f"no endpoint for {operation!r}; set endpoints.{operation}")
        url = path if path.startswith("https://") else f"{self.api_base_url}{path}"
        body = pretty_json(render(self.templates[operation], values)).encode()
        for renewed in (False, True):
            token = await self._access_token(recorder, force=renewed)
            response = await self._post(
                url,
                recorder,
                content=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            if response.status_code != 401 or renewed:
                break
            log.info("ADP refused the token, renewing it", destination=self.destination.id)
        if response.is_success or (missing_ok and response.status_code == 404):
            return response
        raise _api_error(response)

    async def _access_token(self, recorder: CallRecorder, *, force: bool = False) -> str:
        async with self._token_lock:
            if self._token is None or force or time.monotonic() >= self._token.renew_at:
                self._token = await self._fetch_token(recorder)
            return self._token.value

    async def _fetch_token(self, recorder: CallRecorder) -> _Token:
        form = {"grant_type": "client_credentials", "client_id": self.client_id}
        shown = urlencode({**form, "client_secret": MASK})
        form["client_secret"] = self.secret("client_secret")
        response = await self._post(
            self.token_url,
            recorder,
            data=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            shown_body=shown,
            mask_answer=True,
        )
        if response.is_success:
            data = response.json()
            lifetime = float(data.get("expires_in", 3600))
            return _Token(
                str(data["access_token"]), time.monotonic() + lifetime - min(TOKEN_MARGIN, lifetime / 10)
            )
        raise _token_error(response, self.client_id)

    async def _post(
        self,
        url: str,
        recorder: CallRecorder,
        *,
        headers: dict[str, str],
        content: bytes | None = None,
        data: dict[str, str] | None = None,
        shown_body: str | None = None,
        mask_answer: bool = False,
    ) -> Answer:
        """One recorded POST. The token call shows ``shown_body`` and hides a successful answer."""
        if self._client is None:
            raise RuntimeError("AdpConnector.setup() was not awaited")
        request = self._client.build_request("POST", url, content=content, data=data, headers=headers)
        try:
            return await send_recorded(
                self._client,
                request,
                recorder,
                limit=None,
                shown_request=shown_body,
                mask_answer=(lambda answer: "<token, masked>" if answer.is_success else None)
                if mask_answer
                else None,
                error_text=lambda exc: (
                    _transport_error(url, exc).message
                    if isinstance(exc, httpx.TransportError | ssl.SSLError)
                    else f"{type(exc).__name__}: {exc}"
                ),
            )
        except (httpx.TransportError, ssl.SSLError) as exc:  # httpcore lets a TLS alert out unwrapped
            raise _transport_error(url, exc) from exc


def _event_id(response: Answer) -> str | None:
    try:
        events = response.json().get("events") or []
        return str(events[0]["eventID"]) if events and events[0].get("eventID") else None
    except (ValueError, AttributeError, KeyError, TypeError):
        return None


def adp_message(response: Answer) -> str:
    """ADP's own words from any of its error shapes (validation ``response``, ``exceptionMessages``,
    ``confirmMessage``), else the start of the body."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:300]
    if not isinstance(data, dict):
        return response.text[:300]
    messages = [
        str(m.get("message") or m.get("userMessage") or m) for m in data.get("exceptionMessages") or []
    ]
    answer = data.get("response")
    if isinstance(answer, dict):
        code = answer.get("applicationCode") or {}
        text = code.get("message") or code.get("userMessage") or answer.get("message") or ""
        messages.append(f"{code.get('code', 'error')}: {text}".strip(": "))
    for process in (data.get("confirmMessage") or {}).get("processMessages") or []:
        messages.append(str((process.get("userMessage") or {}).get("messageTxt") or process))
    if data.get("error"):
        messages.append(f"{data['error']}: {data.get('error_description', '')}".strip(": "))
    return "; ".join(messages) or response.text[:300]


def _api_error(response: Answer) -> ConnectorError:
    status, message = response.status_code, adp_message(response)
    detail = f"ADP answered {status}: {message}"
    error = _status_error(response, detail)
    if not isinstance(error, PermanentError):
        return error
    if NO_CERTIFICATE in response.text:
        return ConfigurationError(f"{detail}; give the ADP-signed client certificate", status_code=status)
    if status in (401, 403):
        return ConfigurationError(
            f"{detail}; check that the ADP application is entitled to the worker leave API",
            status_code=status,
        )
    return error


def _token_error(response: Answer, client_id: str) -> ConnectorError:
    status, message = response.status_code, adp_message(response)
    detail = f"ADP token endpoint answered {status}: {message}"
    error = _status_error(response, detail)
    if not isinstance(error, PermanentError):
        return error
    return ConfigurationError(
        f"{detail}; check client_id {client_id!r}, the client secret and the client certificate",
        status_code=status,
    )


def _status_error(response: Answer, detail: str) -> ConnectorError:
    """ADP's 429 and 503 are rate limits even without a Retry-After (see connectors.wire)."""
    return status_error(
        response.status_code,
        detail,
        retry_after=response.headers.get("Retry-After"),
        always_backpressure=BACKPRESSURE_STATUSES,
    )


def _transport_error(url: str, exc: httpx.TransportError | ssl.SSLError) -> ConnectorError:
    """A refused client certificate shows as a TLS alert: configuration, not a passing failure."""
    text = f"{type(exc).__name__}: {exc}"
    upper = text.upper()
    if "ALERT" in upper and ("CERTIFICATE" in upper or "UNKNOWN_CA" in upper):
        return ConfigurationError(
            f"POST {url}: ADP refused the TLS client certificate ({text}); give the ADP-signed certificate"
        )
    if "CERTIFICATE_VERIFY_FAILED" in upper:
        return ConfigurationError(f"POST {url}: the server certificate is not trusted ({text})")
    if isinstance(exc, httpx.ReadError):
        # Under TLS 1.3 the server checks the client certificate after the handshake and its alert is
        # lost in the closed connection: a refused certificate looks like a dropped connection.
        return RetryableError(
            f"POST {url}: {text} (connection closed; if it persists, check the client certificate)"
        )
    return RetryableError(f"POST {url}: {text}")
