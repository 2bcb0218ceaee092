"""The follow-up list's filters (tenant, trigger, destination kind) and its CSV export, over real
HTTP with the view filled from Kafka; SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import socket
import time
from typing import Any

from absync.web.auth import hash_token
from absync.web.export import ExportSlots
from projections.runner import catch_up
from schemas.delivery import Status
from tests.web.conftest import Api, fact, then


def ids(page: dict[str, Any]) -> set[str]:
    return {item["delivery_id"] for item in page["items"]}


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def hook(admin: Any, destination_id: str, tenant: str) -> None:
    created = admin.post(
        "/api/v1/destinations",
        json={
            "id": destination_id,
            "tenant": tenant,
            "name": "Hook",
            "kind": "http",
            "settings": {"url": "http://127.0.0.1:9/hook"},
            "secrets": {"signing_secrets": "whsec_" + "a" * 32},
        },
    )
    assert created.status_code == 201, created.text


def test_filters_by_tenant_trigger_and_destination_kind(api: Api) -> None:
    with api.client("configure") as admin:
        hook(admin, "dst-hook", "acme")
    automatic = fact(destination_id="dst-hook", employee_name="Ann Auto")
    retried = then(
        fact(destination_id="dst-hook", employee_name="Rita Retry"), Status.SUCCESSFUL, trigger="retry"
    )
    replayed = then(
        fact(destination_id="dst-other", employee_name="Ray Replay"), Status.PENDING, trigger="replay"
    )
    marked = then(fact(destination_id="dst-other", employee_name="Mark Hand"), Status.SUCCESSFUL, manual=True)
    globex = fact(tenant="globex", destination_id="dst-globex", employee_name="Gus Globex")
    api.seed(automatic, retried, replayed, marked, globex)
    catch_up(api.settings, api.engine)  # the destination record, if it came after the first catch-up

    def listed(who: str, **params: str) -> set[str]:
        with api.client(who) as client:
            answer = client.get("/api/v1/deliveries", params=params)
        assert answer.status_code == 200, answer.text
        return ids(answer.json())

    assert listed("view", tenant="globex") == {globex.delivery_id}
    assert listed("view", tenant="acme") == {d.delivery_id for d in (automatic, retried, replayed, marked)}
    assert listed("acme-view", tenant="globex") == set()  # narrows the token's scope, never widens it
    assert listed("view", trigger="automatic", tenant="acme") == {automatic.delivery_id}
    assert listed("view", trigger="retry") == {retried.delivery_id}
    assert listed("view", trigger="replay") == {replayed.delivery_id}
    assert listed("view", trigger="manual") == {marked.delivery_id}
    assert listed("view", kind="http") == {automatic.delivery_id, retried.delivery_id}
    assert listed("view", kind="http", trigger="retry") == {retried.delivery_id}
    assert listed("view", kind="google") == set()
    with api.client("view") as client:
        bad = client.get("/api/v1/deliveries", params={"trigger": "cron"})
    assert bad.status_code == 422


def test_export_is_the_filtered_list_as_csv_scoped_to_the_tenant(api: Api) -> None:
    first = fact(employee_name="Jane Doe", status=Status.ERROR)
    second = fact(employee_name="John Smith", status=Status.SUCCESSFUL)
    other = fact(tenant="globex", employee_name="Gus Globex", status=Status.ERROR)
    api.seed(first, second, other)
    with api.client("acme-view") as client:
        answer = client.get("/api/v1/deliveries/export.csv")
        errors = client.get("/api/v1/deliveries/export.csv", params={"status": "ERROR"})
        listed = client.get("/api/v1/deliveries", params={"status": "ERROR"}).json()
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    assert "attachment" in answer.headers["content-disposition"]
    table = rows(answer.text)
    header, body = table[0], table[1:]
    assert header[:3] == ["delivery_id", "status", "manual"]
    assert {r[0] for r in body} == {first.delivery_id, second.delivery_id}  # never globex's
    by_id = {r[0]: dict(zip(header, r, strict=True)) for r in body}
    assert by_id[first.delivery_id]["employee_name"] == "Jane Doe"
    assert by_id[first.delivery_id]["status"] == "ERROR"
    assert by_id[first.delivery_id]["last_error"] == "HTTP 500 from the calendar"
    assert [r[0] for r in rows(errors.text)[1:]] == [d["delivery_id"] for d in listed["items"]]
    assert [r[0] for r in rows(errors.text)[1:]] == [first.delivery_id]


def test_export_neutralises_formulas_and_says_when_it_is_cut(api: Api) -> None:
    hostile = [
        fact(employee_name=name, status=Status.ERROR)
        for name in (
            '=HYPERLINK("http://evil";"x")',
            "+1+1",
            "-2",
            "@SUM(A1)",
            "\tTab",
            "\rCr",
            'Comma, "quote"',
        )
    ]
    api.seed(*hostile)
    with api.client("view") as client:
        whole = client.get("/api/v1/deliveries/export.csv")
        cut = client.get("/api/v1/deliveries/export.csv", params={"limit": 3})
        too_many = client.get("/api/v1/deliveries/export.csv", params={"limit": 100_001})
    table = rows(whole.text)
    name_at = table[0].index("employee_name")
    names = sorted(r[name_at] for r in table[1:])
    assert names == sorted(
        ['\'=HYPERLINK("http://evil";"x")', "'+1+1", "'-2", "'@SUM(A1)", "'\tTab", "'\rCr", 'Comma, "quote"']
    )
    assert all(len(r) == len(table[0]) for r in table[1:])  # a comma or quote never shifts a column
    cut_table = rows(cut.text)
    assert len(cut_table) == 1 + 3 + 1
    assert cut_table[-1][0].startswith("# cut: more than 3 deliveries match")
    assert not any(r[0].startswith("# cut") for r in table)
    assert too_many.status_code == 422


def test_export_needs_a_token(api: Api) -> None:
    with api.client() as anonymous:
        assert anonymous.get("/api/v1/deliveries/export.csv").status_code == 401


def test_filters_by_legal_entity_and_department_and_exports_them(api: Api) -> None:
    paris_sales = fact(employee_name="Pia Sales", legal_entity_id="le-fr", department_id="sales")
    paris_ops = fact(employee_name="Otto Ops", legal_entity_id="le-fr", department_id="ops")
    berlin = fact(employee_name="Bea Berlin", legal_entity_id="le-de")
    before_v3 = fact(employee_name="Old Record")  # as a fact written before schema v3: neither field
    api.seed(paris_sales, paris_ops, berlin, before_v3)
    # a later fact of the same delivery without the fields (an older writer) keeps what was seen
    api.seed(then(paris_ops, Status.SUCCESSFUL, legal_entity_id=None, department_id=None))

    def listed(**params: str) -> set[str]:
        with api.client("view") as client:
            answer = client.get("/api/v1/deliveries", params=params)
        assert answer.status_code == 200, answer.text
        return ids(answer.json())

    assert listed(legal_entity="le-fr") == {paris_sales.delivery_id, paris_ops.delivery_id}
    assert listed(legal_entity="le-fr", department="ops") == {paris_ops.delivery_id}
    assert listed(department="sales") == {paris_sales.delivery_id}
    assert listed(legal_entity="le-de") == {berlin.delivery_id}
    assert listed(legal_entity="le-xx") == set()
    with api.client("view") as client:
        detail = client.get(f"/api/v1/deliveries/{before_v3.delivery_id}").json()
        table = rows(client.get("/api/v1/deliveries/export.csv", params={"legal_entity": "le-fr"}).text)
    assert detail["legal_entity_id"] is None and detail["department_id"] is None
    at = table[0].index("department_id")
    assert sorted(r[at] for r in table[1:]) == ["ops", "sales"]


def test_exports_streaming_at_once_are_bounded_per_token(api: Api) -> None:
    """Two exports in flight for a token (their slots held here, as a slow reader holds them): a
    third is a 429 with Retry-After; another token still exports; a slot given back serves again."""
    slots: ExportSlots = api.component.app.state.exports
    view = hash_token(api.tokens["view"])
    assert slots.take(view) is None and slots.take(view) is None
    try:
        with api.client("view") as client:
            refused = client.get("/api/v1/deliveries/export.csv")
        assert refused.status_code == 429, refused.text
        assert "with this token" in refused.json()["detail"] and refused.headers["retry-after"] == "10"
        with api.client("acme-view") as other:
            assert other.get("/api/v1/deliveries/export.csv").status_code == 200
    finally:
        slots.release(view)
        slots.release(view)
    with api.client("view") as client:
        assert client.get("/api/v1/deliveries/export.csv").status_code == 200
    assert slots.take(view) is None, "every export's slot was given back"
    slots.release(view)


def test_an_export_slot_is_given_back_when_its_stream_is_closed_early() -> None:
    slots = ExportSlots(per_token=1, total=1)
    assert slots.take("t") is None
    stream = slots.streaming(iter(["a", "b", "c"]), "t")
    assert next(stream) == "a"
    assert slots.take("u") is not None and "on this process" in str(slots.take("u"))
    stream.close()  # the client went away after one chunk
    assert slots.take("u") is None


def test_a_client_that_never_reads_loses_its_export_and_gives_its_slot_back(api: Api) -> None:
    """A client asks for an export, then reads nothing: once a write waits longer than the send
    timeout, its stream is cut, so its slot (and the database connection it streams from) is free
    again and the token exports at once. Real HTTP, a 4 kB receive buffer, ~7 MB of CSV (more than the socket buffers hold)."""
    slots: ExportSlots = api.component.app.state.exports
    slots.per_token, slots.send_timeout = 1, 1.0
    view = hash_token(api.tokens["view"])
    api.seed(*[fact(employee_name="N" * 5000) for _ in range(500)])
    with api.client("view") as client:  # every row visible before the exports (seeding is async)
        deadline = time.monotonic() + 30
        while client.get("/api/v1/deliveries/stats").json()["total"] < 500:
            assert time.monotonic() < deadline, "the seeded deliveries never all showed"
            time.sleep(0.1)
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    silent.connect(("127.0.0.1", int(api.base_url.rsplit(":", 1)[1])))
    try:
        request = (
            "GET /api/v1/deliveries/export.csv HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {api.tokens['view']}\r\n\r\n"
        )
        silent.sendall(request.encode())
        deadline = time.monotonic() + 30
        while slots.held(view) == 0:
            assert time.monotonic() < deadline, "the export never started"
            time.sleep(0.05)
        while slots.held(view) > 0:
            assert time.monotonic() < deadline, "the silent client's export still holds its slot"
            time.sleep(0.1)
        slots.send_timeout = 30.0  # the next export's client reads, however loaded the machine
        with api.client("view") as client:
            exported = client.get("/api/v1/deliveries/export.csv")
        assert exported.status_code == 200 and len(rows(exported.text)) == 501
        silent.settimeout(30)
        received = bytearray()
        while chunk := silent.recv(1 << 20):
            received.extend(chunk)
        assert b"\r\n0\r\n\r\n" not in received, "the stream was cut, not ended"
        assert 0 < len(received) < len(exported.content)
    finally:
        silent.close()
