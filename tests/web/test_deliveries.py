"""Deliveries over the API: lists and filters, detail with attempts, commands to Kafka, tenants, and
the live event stream."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from confluent_kafka import Consumer

from schemas.codec import codec_for
from schemas.delivery import Command, CommandKind, Status, delivery_key
from streams.kafka import connection_config
from streams.settings import Settings
from streams.topics import Topics
from tests.web.conftest import Api, attempt, fact, then


def read_commands(settings: Settings, count: int) -> list[tuple[str, Command]]:
    """The first ``count`` records of the commands topic: (key, command)."""
    consumer = Consumer(
        {
            **connection_config(settings),
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([Topics(settings).commands])
    out: list[tuple[str, Command]] = []
    try:
        for _ in range(120):  # bounded: 60 s at most
            if len(out) >= count:
                break
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            command = Command.from_avro(codec_for("Command").decode(message.value()))
            out.append(((message.key() or b"").decode(), command))
    finally:
        consumer.close()
    return out


def ids(page: dict[str, Any]) -> set[str]:
    return {item["delivery_id"] for item in page["items"]}


def test_filters_and_cursor_pagination(api: Api) -> None:
    jane = fact(employee_name="Jane Doe", status=Status.ERROR, destination_id="dst-google")
    john = fact(employee_name="John Smith", status=Status.SUCCESSFUL, destination_id="dst-slack")
    june = fact(
        employee_name="Jane Doe",
        status=Status.PENDING,
        destination_id="dst-slack",
        dates=("2026-06-01", "2026-06-02"),
    )
    api.seed(jane, john, june)
    with api.client("view") as client:

        def listed(**params: Any) -> set[str]:
            response = client.get("/api/v1/deliveries", params=params)
            assert response.status_code == 200, response.text
            return ids(response.json())

        assert listed() == {jane.delivery_id, john.delivery_id, june.delivery_id}
        assert listed(status="ERROR") == {jane.delivery_id}
        assert listed(destination="dst-slack") == {john.delivery_id, june.delivery_id}
        assert listed(employee="JANE") == {jane.delivery_id, june.delivery_id}
        assert listed(absence=john.absence_id) == {john.delivery_id}
        assert listed(date_from="2026-05-01", date_to="2026-06-30") == {june.delivery_id}
        seen: list[str] = []
        params: dict[str, Any] = {"limit": 1}
        for _ in range(10):
            page = client.get("/api/v1/deliveries", params=params).json()
            seen += [item["delivery_id"] for item in page["items"]]
            if page["next_cursor"] is None:
                break
            params = {"limit": 1, "cursor": page["next_cursor"]}
        assert sorted(seen) == sorted([jane.delivery_id, john.delivery_id, june.delivery_id])
        assert client.get("/api/v1/deliveries", params={"cursor": "not-a-cursor"}).status_code == 422
        stats = client.get("/api/v1/deliveries/stats").json()
        assert stats == {"counts": {"PENDING": 1, "SUCCESSFUL": 1, "ERROR": 1, "SUPERSEDED": 0}, "total": 3}


def test_detail_shows_every_attempt_with_payloads(api: Api) -> None:
    first = fact(status=Status.PENDING, attempt=attempt(1, status=503), next_retry_at=dt.datetime.now(dt.UTC))
    second = then(first, Status.ERROR, attempt_record=attempt(2, status=500), attempt=2)
    api.seed(first, second)
    with api.client("view") as client:
        detail = client.get(f"/api/v1/deliveries/{first.delivery_id}").json()
        assert client.get("/api/v1/deliveries/dlv_unknown").status_code == 404
    assert detail["status"] == "ERROR" and detail["attempt_count"] == 2
    assert [(a["number"], a["response_status"]) for a in detail["attempts"]] == [(1, 503), (2, 500)]
    assert detail["attempts"][1]["request_body"] == '{"subject": "Jane Doe - leave"}'
    assert detail["attempts"][1]["response_body"] == '{"error": "backend down"}'
    assert detail["attempts"][1]["request_headers"]["Authorization"] == "***"


def test_retry_and_mark_processed_emit_commands_to_kafka(api: Api) -> None:
    failed = fact(status=Status.ERROR, destination_id="dst-google")
    api.seed(failed)
    with api.client("view") as client:
        retry = client.post(f"/api/v1/deliveries/{failed.delivery_id}/retry")
        mark = client.post(f"/api/v1/deliveries/{failed.delivery_id}/mark-processed")
    assert retry.status_code == 202 and mark.status_code == 202
    commands = read_commands(api.settings, 2)
    assert [(c.command_id, c.kind) for _, c in commands] == [
        (retry.json()["command_id"], CommandKind.RETRY),
        (mark.json()["command_id"], CommandKind.MARK_PROCESSED),
    ]
    for key, command in commands:
        assert key == delivery_key("dst-google", failed.absence_id)
        assert (command.delivery_id, command.tenant, command.issued_by) == (
            failed.delivery_id,
            "acme",
            "viewer",
        )


def test_commands_that_make_no_sense_are_refused_with_409(api: Api) -> None:
    superseded = fact(status=Status.SUPERSEDED)
    successful = fact(status=Status.SUCCESSFUL)
    api.seed(superseded, successful)
    with api.client("view") as client:
        assert client.post(f"/api/v1/deliveries/{superseded.delivery_id}/retry").status_code == 409
        assert client.post(f"/api/v1/deliveries/{superseded.delivery_id}/mark-processed").status_code == 409
        assert client.post(f"/api/v1/deliveries/{successful.delivery_id}/mark-processed").status_code == 409
        resend = client.post(f"/api/v1/deliveries/{successful.delivery_id}/retry")
    assert resend.status_code == 202
    assert [c.delivery_id for _, c in read_commands(api.settings, 1)] == [successful.delivery_id]


def test_a_tenant_token_sees_and_acts_on_its_tenant_only(api: Api) -> None:
    ours = fact(tenant="acme", status=Status.ERROR)
    theirs = fact(tenant="globex", status=Status.ERROR)
    api.seed(ours, theirs)
    with api.client("acme-view") as client:
        assert ids(client.get("/api/v1/deliveries").json()) == {ours.delivery_id}
        assert ids(client.get("/api/v1/deliveries", params={"absence": theirs.absence_id}).json()) == set()
        assert client.get("/api/v1/deliveries/stats").json()["total"] == 1
        assert client.get(f"/api/v1/deliveries/{ours.delivery_id}").status_code == 200
        for path in ("", "/retry", "/mark-processed"):
            method = client.get if not path else client.post
            assert method(f"/api/v1/deliveries/{theirs.delivery_id}{path}").status_code == 404
        assert client.get("/api/v1/me").json() == {"name": "acme viewer", "right": "view", "tenant": "acme"}
    with api.client("view") as everyone:
        assert everyone.get("/api/v1/deliveries/stats").json()["total"] == 2


def read_event(lines: Any) -> dict[str, Any]:
    """The next ``deliveries`` batch with items of a server-sent event stream (comments skipped)."""
    data: dict[str, Any] | None = None
    for line in lines:
        if line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
        elif line == "" and data is not None:
            if data["items"]:
                return data
            data = None
    raise AssertionError("the stream ended")


def test_stream_sends_changed_deliveries_of_the_tokens_tenant(api: Api) -> None:
    before = fact(tenant="acme", status=Status.PENDING)
    api.seed(before)
    with api.client("acme-view") as client, client.stream("GET", "/api/v1/deliveries/stream") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == ": connected"
        now = dt.datetime.now(dt.UTC)
        theirs = fact(tenant="globex", status=Status.ERROR, at=now)
        ours = then(before, Status.SUCCESSFUL, occurred_at=now + dt.timedelta(milliseconds=5))
        api.seed(theirs, ours)
        batch = read_event(lines)
    [event] = batch["items"]  # globex's change is not for this token
    assert (event["delivery_id"], event["status"], event["tenant"]) == (
        ours.delivery_id,
        "SUCCESSFUL",
        "acme",
    )
    assert batch["stats"]["counts"]["SUCCESSFUL"] == batch["stats"]["total"] == 1  # acme's only
