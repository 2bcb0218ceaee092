"""The ADP connector against a local HTTPS fake of ADP that requires a client certificate (mutual TLS)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import trustme
from pydantic import SecretStr

from connectors.adp import AdpConnector
from connectors.base import CallRecorder
from connectors.exceptions import BackpressureError, ConfigurationError, PermanentError, RetryableError
from connectors.registry import connector_class
from schemas.delivery import Delivery
from schemas.models import AbsenceStatus, ChangeKind, HalfDay
from tests.connectors.deliveries import make_delivery, make_destination
from tests.fakes.adp import FakeAdp, validation_error
from tests.fakes.loopback import Response, loopback_options

AOID = "G3ABCDEF0123456789"
MAPPING = {
    "leave_codes": {"la-9": "SICK", "c-1": "VAC"},
    "associates_by_employee_number": {"00042": AOID},
    "work_assignment_ids": {AOID: "WA-1"},
}


def adp_delivery(employee_number: str | None = "00042", **kwargs: Any) -> Delivery:
    """A delivery whose employee has an employee number (the default associate lookup)."""
    delivery = make_delivery(destination_id="dst-adp", **kwargs)
    employee = dataclasses.replace(delivery.event.employee, employee_number=employee_number)
    return delivery.evolve(event=dataclasses.replace(delivery.event, employee=employee))


def secrets_of(fake: FakeAdp, client_secret: str | None = None) -> dict[str, SecretStr]:
    return {
        "client_secret": SecretStr(client_secret or fake.client_secret),
        "client_cert_pem": SecretStr(fake.client_cert_pem),
        "client_key_pem": SecretStr(fake.client_key_pem),
    }


def stranger_certificate(fake: FakeAdp) -> dict[str, SecretStr]:
    """Secrets with a client certificate from another CA than the fake's (not "ADP-signed")."""
    stranger = trustme.CA().issue_cert("absync-client@acme.example")
    return {
        **secrets_of(fake),
        "client_cert_pem": SecretStr(stranger.cert_chain_pems[0].bytes().decode()),
        "client_key_pem": SecretStr(stranger.private_key_pem.bytes().decode()),
    }


async def open_connector(
    fake: FakeAdp, secrets: dict[str, SecretStr] | None = None, **settings: Any
) -> AdpConnector:
    destination = make_destination("adp", fake.settings(**{**MAPPING, **settings}), dest_id="dst-adp")
    connector = AdpConnector(destination, secrets or secrets_of(fake), loopback_options())
    await connector.setup()
    return connector


@pytest.fixture
def fake() -> Iterator[FakeAdp]:
    with FakeAdp() as adp:
        yield adp


@pytest.fixture
async def connector(fake: FakeAdp) -> AsyncIterator[AdpConnector]:
    connector = await open_connector(fake)
    yield connector
    await connector.close()


async def test_registered_under_adp() -> None:
    assert connector_class("adp") is AdpConnector


async def test_token_then_create_update_and_cancel(fake: FakeAdp, connector: AdpConnector) -> None:
    start = dt.date(2026, 3, 30)
    outcome = await connector.deliver(
        adp_delivery(start=start, end=dt.date(2026, 4, 1), end_half=HalfDay.AM), CallRecorder()
    )
    [leave] = fake.leaves[AOID]
    assert outcome.external_id == leave["eventID"]
    assert leave["leaveTypeCode"] == {"codeValue": "SICK"}
    assert (leave["startDateTime"], leave["expectedEndDateTime"]) == (
        "2026-03-30T00:00:00",
        "2026-04-01T12:00:00",
    )
    assert leave["workAssignmentID"] == "WA-1"
    token_call = fake.requests[0]
    assert token_call.form() == {
        "grant_type": "client_credentials",
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
    }

    moved = adp_delivery(start=start, end=dt.date(2026, 4, 3), change=ChangeKind.UPDATED, version=2)
    outcome = await connector.deliver(moved, CallRecorder())
    [leave] = fake.leaves[AOID]
    assert leave["expectedEndDateTime"] == "2026-04-03T23:59:59"
    assert "previous leave cancelled" in outcome.summary
    assert [r.path.rsplit("/", 1)[1] for r in fake.api_requests()] == [
        "worker.leave.absence.request",
        "worker.leave.cancel",
        "worker.leave.absence.request",
    ]
    assert len(fake.tokens_issued) == 1, "the token is cached between calls"

    cancelled = adp_delivery(
        start=start, change=ChangeKind.CANCELLED, status=AbsenceStatus.CANCELLED, version=3
    )
    await connector.deliver(cancelled, CallRecorder())
    assert fake.leaves[AOID] == []
    cancel_body = fake.api_requests()[-1].json()
    assert cancel_body["events"][0]["data"]["eventContext"] == {
        "associateOID": AOID,
        "workAssignmentID": "WA-1",
        "leaveStartDate": "2026-03-30",
    }
    again = await connector.deliver(cancelled, CallRecorder())
    assert again.summary == "no such leave in ADP: nothing to cancel"


async def test_pending_absences_send_nothing_and_leaving_pending_cancels(
    fake: FakeAdp, connector: AdpConnector
) -> None:
    pending = adp_delivery(status=AbsenceStatus.PENDING, change=ChangeKind.CREATED)
    assert (await connector.deliver(pending, CallRecorder())).summary == "pending: nothing sent"
    assert fake.api_requests() == []
    deleted = adp_delivery(status=AbsenceStatus.PENDING, change=ChangeKind.DELETED)
    outcome = await connector.deliver(deleted, CallRecorder())
    assert outcome.summary == "no such leave in ADP: nothing to cancel"

    await connector.deliver(adp_delivery(), CallRecorder())
    back_to_pending = adp_delivery(status=AbsenceStatus.PENDING, change=ChangeKind.UPDATED, version=2)
    await connector.deliver(back_to_pending, CallRecorder())
    assert fake.leaves[AOID] == []


async def test_expired_token_is_renewed_before_use() -> None:
    with FakeAdp(token_lifetime=1) as fake:
        connector = await open_connector(fake)
        try:
            await connector.deliver(adp_delivery(start=dt.date(2026, 3, 2)), CallRecorder())
            await asyncio.sleep(1.2)  # past the one-second lifetime
            await connector.deliver(
                adp_delivery(absence_id="abs-2", start=dt.date(2026, 3, 9)), CallRecorder()
            )
        finally:
            await connector.close()
        assert len(fake.tokens_issued) == 2
        assert len(fake.api_requests()) == 2, "the renewal happened before the call, not after a 401"
        assert len(fake.leaves[AOID]) == 2


async def test_a_refused_token_is_renewed_once(fake: FakeAdp, connector: AdpConnector) -> None:
    await connector.test_connection(CallRecorder())
    fake.revoke_tokens()
    await connector.deliver(adp_delivery(), CallRecorder())
    assert len(fake.tokens_issued) == 2
    assert len(fake.leaves[AOID]) == 1


async def test_adp_error_shapes(fake: FakeAdp, connector: AdpConnector) -> None:
    with pytest.raises(PermanentError, match="validationError: Leave type code 'VAC' is not valid") as err:
        fake.leave_codes.discard("VAC")
        leave = dataclasses.replace(make_delivery().event.absence.leave_account, id="la-1", category_id="c-1")
        delivery = adp_delivery()
        absence = dataclasses.replace(delivery.event.absence, leave_account=leave)
        await connector.deliver(
            delivery.evolve(event=dataclasses.replace(delivery.event, absence=absence)), CallRecorder()
        )
    assert err.value.status_code == 400 and not isinstance(err.value, ConfigurationError)

    fake.fail(
        Response(400, {"exceptionMessages": [{"messageType": "error", "message": "Worker is terminated"}]})
    )
    with pytest.raises(PermanentError, match="ADP answered 400: Worker is terminated"):
        await connector.deliver(adp_delivery(), CallRecorder())

    fake.fail(validation_error("Leave overlaps payroll close"))
    with pytest.raises(PermanentError, match="Leave overlaps payroll close"):
        await connector.deliver(adp_delivery(), CallRecorder())


async def test_rate_limits_and_server_errors_are_retryable(fake: FakeAdp, connector: AdpConnector) -> None:
    fake.fail(Response(429, {"exceptionMessages": [{"message": "Too many requests"}]}, {"Retry-After": "30"}))
    with pytest.raises(BackpressureError) as err:
        await connector.deliver(adp_delivery(), CallRecorder())
    assert err.value.retry_after == 30.0
    fake.fail(Response(503, {"exceptionMessages": [{"message": "Service unavailable"}]}))
    with pytest.raises(BackpressureError):
        await connector.deliver(adp_delivery(), CallRecorder())
    fake.fail(Response(500, {"exceptionMessages": [{"message": "Internal error"}]}))
    with pytest.raises(RetryableError) as retry:
        await connector.deliver(adp_delivery(), CallRecorder())
    assert not isinstance(retry.value, BackpressureError)
    await connector.deliver(adp_delivery(), CallRecorder())
    assert len(fake.leaves[AOID]) == 1


async def test_wrong_client_secret_is_a_configuration_error(fake: FakeAdp) -> None:
    connector = await open_connector(fake, secrets_of(fake, client_secret="not-the-secret"))
    try:
        with pytest.raises(ConfigurationError, match="invalid_client"):
            await connector.deliver(adp_delivery(), CallRecorder())
    finally:
        await connector.close()
    assert fake.api_requests() == []


async def test_unmapped_leave_code_and_employee_name_what_is_missing(
    fake: FakeAdp, connector: AdpConnector
) -> None:
    delivery = adp_delivery()
    leave = dataclasses.replace(delivery.event.absence.leave_account, id="12", name="RTT", category_id=None)
    absence = dataclasses.replace(delivery.event.absence, leave_account=leave)
    with pytest.raises(ConfigurationError) as err:
        await connector.deliver(
            delivery.evolve(event=dataclasses.replace(delivery.event, absence=absence)), CallRecorder()
        )
    assert err.value.message == "no ADP leave code for leave account 'RTT' (id 12); add it to leave_codes"

    with pytest.raises(
        ConfigurationError,
        match=r"no ADP associateOID for employee 'Jane Doe' \(id emp-7, employee number 99999\)",
    ):
        await connector.deliver(adp_delivery(employee_number="99999"), CallRecorder())
    assert fake.requests == []

    deleted = adp_delivery(change=ChangeKind.DELETED, status=AbsenceStatus.CANCELLED)
    deleted = deleted.evolve(
        event=dataclasses.replace(
            deleted.event, absence=dataclasses.replace(deleted.event.absence, leave_account=leave)
        )
    )
    outcome = await connector.deliver(deleted, CallRecorder())
    assert outcome.summary == "no such leave in ADP: nothing to cancel", "a cancel needs no leave code"


async def test_the_fake_refuses_a_call_without_client_certificate(fake: FakeAdp) -> None:
    context = ssl.create_default_context(cafile=fake.ca_file)
    async with httpx.AsyncClient(verify=context) as client:
        with pytest.raises((httpx.TransportError, ssl.SSLError)):
            await client.post(f"{fake.url}/auth/oauth/v2/token", data={"grant_type": "client_credentials"})
    assert fake.requests == []


async def test_a_certificate_not_signed_by_adp_is_refused() -> None:
    """Under TLS 1.2 ADP's alert arrives during the handshake: a configuration error."""
    with FakeAdp(max_tls=ssl.TLSVersion.TLSv1_2) as fake:
        connector = await open_connector(fake, stranger_certificate(fake))
        try:
            with pytest.raises(ConfigurationError, match="refused the TLS client certificate"):
                await connector.deliver(adp_delivery(), CallRecorder())
        finally:
            await connector.close()
        assert fake.requests == []


async def test_under_tls13_a_refused_certificate_always_names_the_certificate(fake: FakeAdp) -> None:
    """Under TLS 1.3 the server checks the certificate after the handshake: the client sees the alert
    (configuration error) or, when the connection closes first, only a dropped connection (retried);
    either way the message points at the certificate."""
    connector = await open_connector(fake, stranger_certificate(fake))
    try:
        with pytest.raises((RetryableError, ConfigurationError)) as err:
            await connector.deliver(adp_delivery(), CallRecorder())
    finally:
        await connector.close()
    assert "client certificate" in err.value.message
    assert fake.requests == []


async def test_an_unusable_key_is_a_configuration_error(fake: FakeAdp) -> None:
    secrets = {**secrets_of(fake), "client_key_pem": SecretStr("-----BEGIN PRIVATE KEY-----\nnope\n")}
    connector = AdpConnector(make_destination("adp", fake.settings(**MAPPING)), secrets)
    with pytest.raises(ConfigurationError, match="client certificate or key is not usable"):
        await connector.setup()


async def test_secrets_never_in_recorded_calls(fake: FakeAdp, connector: AdpConnector) -> None:
    recorder = CallRecorder(connector.secrets)
    await connector.deliver(adp_delivery(), recorder)
    fake.revoke_tokens()
    await connector.deliver(adp_delivery(absence_id="abs-2", start=dt.date(2026, 4, 6)), recorder)
    recorded = json.dumps([dataclasses.asdict(call) for call in recorder.calls], default=str)
    assert [c.response_status for c in recorder.calls] == [200, 200, 401, 200, 200]
    assert "client_secret=" in recorded and fake.client_id in recorded
    for secret in (fake.client_secret, *fake.tokens_issued, fake.client_key_pem.splitlines()[1]):
        assert secret not in recorded


async def test_gxp_style_endpoints_and_templates_are_settings(fake: FakeAdp) -> None:
    template = {
        "events": [
            {
                "data": {
                    "eventContext": {"associateOID": "{associate_oid}"},
                    "transform": {
                        "workerLeave": {
                            "leaveAbsence": {
                                "startDateTime": "{start_date}T00:00:00",
                                "leaveTypeCode": {"codeValue": "{leave_code}"},
                                "comment": "absync {absence_id} ({half_days} half-days) for matricule {employee_number}",
                            }
                        }
                    },
                }
            }
        ]
    }
    connector = await open_connector(
        fake,
        endpoints={"request": "/events/hr/v1/worker.leave.absence.request"},
        templates={"request": template},
    )
    try:
        await connector.deliver(adp_delivery(absence_id="abs-77", end=dt.date(2026, 3, 31)), CallRecorder())
        bad = await open_connector(fake, templates={"request": {"x": "{matricule}"}})
        with pytest.raises(ConfigurationError, match=r"placeholder \{matricule\} is unknown"):
            await bad.deliver(adp_delivery(), CallRecorder())
        await bad.close()
    finally:
        await connector.close()
    [leave] = fake.leaves[AOID]
    assert leave["comment"] == "absync abs-77 (4 half-days) for matricule 00042"
    assert leave["workAssignmentID"] is None, "the custom template sends no work assignment"


async def test_an_employee_without_email_reaches_adp_and_a_refusal_cancels(
    fake: FakeAdp, connector: AdpConnector
) -> None:
    """ADP finds the associate by employee number: the email is not needed (issue 17 item 2)."""
    outcome = await connector.deliver(adp_delivery(email=""), CallRecorder())
    [leave] = fake.leaves[AOID]
    assert outcome.external_id == leave["eventID"]
    refused = adp_delivery(email="", status=AbsenceStatus.REFUSED, change=ChangeKind.UPDATED, version=2)
    await connector.deliver(refused, CallRecorder())
    assert fake.leaves[AOID] == []
