"""Destinations over the API: secrets are write-only (never answered, never audited in clear, encrypted
in Kafka), every change is audited, "test connection" runs the real connector, tenants are apart."""

from __future__ import annotations

import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaError

from schemas.codec import codec_for
from schemas.destination import Destination
from streams.kafka import connection_config
from streams.secrets import SecretBox
from streams.topics import Topics
from tests.fakes.receiver import Receiver
from tests.web.conftest import Api

SIGNING = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PASSWORD = "hunter2-correct-horse"


def destination_records(api: Api) -> list[tuple[bytes, Destination]]:
    """Every record of the destinations topic so far: (raw value, decoded)."""
    consumer = Consumer(
        {
            **connection_config(api.settings),
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )
    consumer.subscribe([Topics(api.settings).destinations])
    out: list[tuple[bytes, Destination]] = []
    try:
        for _ in range(120):  # bounded: 60 s at most
            message = consumer.poll(0.5)
            if message is None:
                continue
            error, value = message.error(), message.value()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    break
                continue
            assert value is not None
            out.append((value, Destination.from_avro(codec_for("Destination").decode(value))))
    finally:
        consumer.close()
    return out


def body(**changes: Any) -> dict[str, Any]:
    return {
        "name": "Team webhook",
        "kind": "http",
        "settings": {"url": "http://127.0.0.1:9/hook", "auth": "basic"},
        "secrets": {"signing_secrets": SIGNING, "username": "absync", "password": PASSWORD},
        **changes,
    }


def test_secrets_are_write_only_and_encrypted_in_kafka(api: Api) -> None:
    with api.client("configure") as admin:
        created = admin.post("/api/v1/destinations", json={"id": "dst-hook", "tenant": "acme", **body()})
        renamed = admin.put("/api/v1/destinations/dst-hook", json={**body(name="Renamed"), "secrets": {}})
        new_password = admin.put(
            "/api/v1/destinations/dst-hook",
            json={**body(name="Renamed"), "secrets": {"password": "rotated-pass-99"}},
        )
        answers = [
            created,
            renamed,
            new_password,
            admin.get("/api/v1/destinations/dst-hook"),
            admin.get("/api/v1/destinations"),
            admin.get("/api/v1/destinations/dst-hook/audit"),
        ]
    assert [r.status_code for r in answers] == [201, 200, 200, 200, 200, 200]
    for answer in answers:
        for secret in (SIGNING, PASSWORD, "rotated-pass-99"):
            assert secret not in answer.text
    assert created.json()["secrets"] == {"password": "***", "signing_secrets": "***", "username": "***"}
    assert answers[3].json()["name"] == "Renamed" and answers[3].json()["revision"] == 3

    records = destination_records(api)
    assert [d.revision for _, d in records] == [1, 2, 3]
    for raw, _ in records:
        assert PASSWORD.encode() not in raw and SIGNING.encode() not in raw
    box = SecretBox.from_settings(api.settings)
    first, kept, rotated = (d for _, d in records)
    assert box.decrypt(first.secrets["password"]).get_secret_value() == PASSWORD
    assert kept.secrets == first.secrets  # an update without secrets keeps them
    assert box.decrypt(rotated.secrets["password"]).get_secret_value() == "rotated-pass-99"
    assert rotated.secrets["signing_secrets"] == first.secrets["signing_secrets"]

    audit = answers[5].json()
    assert [(e["action"], e["actor"]) for e in audit] == [
        ("update", "admin"),
        ("update", "admin"),
        ("create", "admin"),
    ]
    assert audit[0]["changes"] == {"secrets": {"password": {"to": "***"}}}
    assert audit[1]["changes"] == {"name": {"from": "Team webhook", "to": "Renamed"}}
    assert audit[2]["changes"]["secrets"] == {
        name: {"to": "***"} for name in ("password", "signing_secrets", "username")
    }


def test_disable_enable_and_conflicts(api: Api) -> None:
    with api.client("configure") as admin:
        assert (
            admin.post("/api/v1/destinations", json={"id": "dst-x", "tenant": "acme", **body()}).status_code
            == 201
        )
        assert (
            admin.post("/api/v1/destinations", json={"id": "dst-x", "tenant": "acme", **body()}).status_code
            == 409
        )
        assert (
            admin.post("/api/v1/destinations", json={"id": "dst-y", **body()}).status_code == 422
        )  # no tenant
        assert admin.post("/api/v1/destinations/dst-x/disable").json()["enabled"] is False
        assert admin.post("/api/v1/destinations/dst-x/disable").json()["enabled"] is False  # no change
        assert admin.get("/api/v1/destinations/dst-x").json()["enabled"] is False
        assert admin.post("/api/v1/destinations/dst-x/enable").json()["enabled"] is True
        audit = admin.get("/api/v1/destinations/dst-x/audit").json()
        assert admin.put("/api/v1/destinations/dst-missing", json=body()).status_code == 404
    assert [e["action"] for e in audit] == ["enable", "disable", "create"]
    assert audit[1]["changes"] == {"enabled": {"from": True, "to": False}}
    assert [d.enabled for _, d in destination_records(api)] == [True, False, True]


def test_connection_test_runs_the_connector_and_masks_its_calls(api: Api) -> None:
    with Receiver(secrets=[SIGNING]) as receiver, api.client("configure") as admin:
        good = {"name": "Good", "kind": "http", "settings": {"url": receiver.url + "/hook"}}
        admin.post(
            "/api/v1/destinations",
            json={"id": "dst-good", "tenant": "acme", **good, "secrets": {"signing_secrets": SIGNING}},
        )
        wrong = {**good, "secrets": {"signing_secrets": "whsec_" + "A" * 32}}
        admin.post("/api/v1/destinations", json={"id": "dst-wrong", "tenant": "acme", **wrong})
        ok = admin.post("/api/v1/destinations/dst-good/test")
        refused = admin.post("/api/v1/destinations/dst-wrong/test")
        pings = len(receiver.requests)
    assert ok.status_code == 200 and ok.json()["ok"] is True, ok.text
    call = ok.json()["calls"][0]
    assert (call["method"], call["url"], call["response_status"]) == ("POST", receiver.url + "/hook", 200)
    assert call["request_headers"]["webhook-signature"] == "***"
    assert refused.status_code == 200 and refused.json()["ok"] is False
    assert "401" in refused.json()["error"] and refused.json()["calls"][0]["response_status"] == 401
    assert pings == 2
    assert SIGNING not in ok.text + refused.text


def test_a_tenant_token_configures_its_tenant_only(api: Api) -> None:
    with api.client("configure") as admin:
        assert (
            admin.post(
                "/api/v1/destinations", json={"id": "dst-globex", "tenant": "globex", **body()}
            ).status_code
            == 201
        )
    with api.client("acme-configure") as acme:
        created = acme.post("/api/v1/destinations", json={"id": "acme:dst", **body()})
        assert created.status_code == 201 and created.json()["tenant"] == "acme"
        assert (
            acme.post("/api/v1/destinations", json={"id": "dst-z", "tenant": "globex", **body()}).status_code
            == 403
        )
        assert [d["id"] for d in acme.get("/api/v1/destinations").json()] == ["acme:dst"]
        for method, path in [
            ("GET", ""),
            ("PUT", ""),
            ("POST", "/disable"),
            ("POST", "/enable"),
            ("POST", "/test"),
            ("GET", "/audit"),
        ]:
            answer = acme.request(
                method, f"/api/v1/destinations/dst-globex{path}", json=body() if method == "PUT" else None
            )
            assert answer.status_code == 404, f"{method} {path}"
    with api.client("configure") as admin:
        assert admin.get("/api/v1/destinations/dst-globex").json()["enabled"] is True
