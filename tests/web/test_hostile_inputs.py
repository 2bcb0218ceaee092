"""Hostile inputs to the routes added for issue 16 (docs/security.md, "Hostile-input walk"): control
characters in URLs and resync filters, times Kafka cannot look up, another tenant's ids, the wrong
right. Each answer is a clear 4xx (never a 500), nothing is audited for a refused request, and the
API keeps answering. The real API, broker and database (SQLite and PostgreSQL: PostgreSQL refuses a
NUL in a text parameter, which was a 500 and, in the streamed export, a reset connection).
"""

from __future__ import annotations

from schemas.delivery import Status
from tests.web.conftest import Api, attempt, fact

CONTROL_URLS = [
    ("/api/v1/deliveries?destination=%00", ["query", "destination"]),
    ("/api/v1/deliveries?employee=a%00b&status=ERROR", ["query", "employee"]),
    ("/api/v1/deliveries?legal_entity=%0A", ["query", "legal_entity"]),
    ("/api/v1/deliveries/export.csv?department=%00", ["query", "department"]),
    ("/api/v1/deliveries/export.csv?tenant=%1B%5B2J", ["query", "tenant"]),
    ("/api/v1/deliveries/stats?destination=%00", ["query", "destination"]),
    ("/api/v1/deliveries/stream?destination=%00", ["query", "destination"]),
    ("/api/v1/audit?actor=%00", ["query", "actor"]),
    ("/api/v1/audit?destination=%7F", ["query", "destination"]),
    ("/api/v1/deliveries/dlv_%00", ["path"]),
    ("/api/v1/destinations/dst%00/recover", ["path"]),
    ("/api/v1/destinations/dst%0D%0A/resync", ["path"]),
]


def create(api: Api, destination_id: str, tenant: str) -> None:
    with api.client("configure") as admin:
        created = admin.post(
            "/api/v1/destinations",
            json={
                "id": destination_id,
                "tenant": tenant,
                "name": destination_id,
                "kind": "http",
                "settings": {"url": "http://127.0.0.1:9/"},
            },
        )
    assert created.status_code == 201, created.text


def test_control_characters_in_a_url_are_a_422_naming_the_parameter(api: Api) -> None:
    api.seed(fact(status=Status.ERROR, attempt=attempt()))
    with api.client("configure") as admin:
        for url, loc in CONTROL_URLS:
            refused = admin.get(url)
            assert refused.status_code == 422, (url, refused.text)
            assert refused.json()["detail"][0]["loc"] == loc, url
            assert "\x00" not in refused.text and "%00" not in refused.text, url
        # Nothing stalled, nothing lost: the same filters without the NUL still answer.
        listed = admin.get("/api/v1/deliveries", params={"status": "ERROR"})
        assert listed.status_code == 200 and len(listed.json()["items"]) == 1
        exported = admin.get("/api/v1/deliveries/export.csv", params={"status": "ERROR"})
        assert exported.status_code == 200 and len(exported.text.splitlines()) == 2


def test_resync_filters_and_times_out_of_bounds_are_refused_before_a_job_starts(api: Api) -> None:
    create(api, "dst-probe", "acme")
    bad = {
        "legal_entity NUL": ({"legal_entity": "le\x00fr"}, "legal_entity", "control characters"),
        "department escape": ({"department": "\x1b[2J"}, "department", "control characters"),
        # Kafka's record times start in 1970: the broker answered UNSUPPORTED_VERSION after the 202.
        "year 1": ({"changed_since": "0001-01-01T00:00:00+14:00"}, "changed_since", "1970-01-01"),
        "before 1970": ({"changed_since": "1969-12-31T23:59:59Z"}, "changed_since", "1970-01-01"),
        "past 9999 in UTC": ({"changed_since": "9999-12-31T23:59:59-14:00"}, "changed_since", "9999"),
        "a list": ({"legal_entity": ["le-fr"] * 10_000}, "legal_entity", "string"),
        "1 MB": ({"department": "d" * 1_000_000}, "department", "at most 256"),
    }
    with api.client("configure") as admin:
        for what, (body, field, message) in bad.items():
            refused = admin.post("/api/v1/destinations/dst-probe/resync", json=body)
            assert refused.status_code in (413, 422), (what, refused.text)
            if refused.status_code == 422:
                [error] = refused.json()["detail"]
                assert error["loc"] == ["body", field] and message in error["msg"], (what, error)
        assert admin.get("/api/v1/destinations/dst-probe/resync").status_code == 404  # no job started
        audit = admin.get("/api/v1/audit", params={"destination": "dst-probe"}).json()["items"]
        assert [entry["action"] for entry in audit] == ["create"]  # and nothing audited
        started = admin.post("/api/v1/destinations/dst-probe/resync", json={"changed_since": "1970-01-01"})
        assert started.status_code == 202, started.text


def test_another_tenants_destination_looks_missing_and_rights_are_checked(api: Api) -> None:
    create(api, "dst-other", "other")
    since = {"since": "2026-01-01T00:00:00Z"}
    with api.client("acme-configure") as tenant, api.client("view") as viewer:
        for method, path, body in [
            ("POST", "recover", since),
            ("GET", "recover", None),
            ("POST", "resync", {}),
            ("GET", "resync", None),
            ("GET", "health", None),
        ]:
            theirs = tenant.request(method, f"/api/v1/destinations/dst-other/{path}", json=body)
            missing = tenant.request(method, f"/api/v1/destinations/dst-nowhere/{path}", json=body)
            assert (theirs.status_code, theirs.json()) == (missing.status_code, missing.json()), path
            assert theirs.status_code == 404, (path, theirs.text)
            refused = viewer.request(method, f"/api/v1/destinations/dst-other/{path}", json=body)
            assert refused.status_code == 403, (path, refused.text)
        assert tenant.get("/api/v1/audit", params={"destination": "dst-other"}).json()["items"] == []
        for method, path in [("GET", "/api/v1/audit"), ("GET", "/api/v1/alerts"), ("PUT", "/api/v1/alerts")]:
            assert viewer.request(method, path, json={}).status_code == 403, path
        erase = viewer.post("/api/v1/erasures", json={"employee_email": "jane@acme.com"})
        assert erase.status_code == 403


def test_malformed_recover_times_and_erasure_emails_are_refused_without_a_job(api: Api) -> None:
    create(api, "dst-recover", "acme")
    with api.client("configure") as admin:
        for since in [
            "2026-01-01T00:00:00\x00+00:00",
            "2026-01-01T00:00:00+99:00",
            "2026-01-01T00:00:00Z" + "0" * 100_000,
            None,
            ["2026-01-01T00:00:00Z"],
            1_767_225_600,
        ]:
            refused = admin.post("/api/v1/destinations/dst-recover/recover", json={"since": since})
            assert refused.status_code == 422, (since, refused.text[:200])
            assert refused.json()["detail"][0]["loc"] == ["body", "since"]
        assert admin.get("/api/v1/destinations/dst-recover/recover").status_code == 404  # no job
        for email in ["jane\x00@acme.com", "j" * 400 + "@acme.com", "@", 5, ["jane@acme.com"]]:
            refused = admin.post("/api/v1/erasures", json={"employee_email": email})
            assert refused.status_code == 422, (email, refused.text[:200])
        for raw in [b'{"employee_email":"jane\xff@acme.com"}', b'{"employee_email":"jane\\ud800@acme.com"}']:
            refused = admin.post(
                "/api/v1/erasures", content=raw, headers={"Content-Type": "application/json"}
            )
            assert refused.status_code in (400, 422), (raw, refused.text)
        audit = admin.get("/api/v1/audit", params={"destination": "dst-recover"}).json()["items"]
        assert [entry["action"] for entry in audit] == ["create"]


def test_a_destination_name_is_one_line_of_text(api: Api) -> None:
    """The name goes into operator alerts: a line break would forge a Slack line of its own."""
    body = {"id": "dst-name", "tenant": "acme", "kind": "http", "settings": {"url": "http://127.0.0.1:9/"}}
    with api.client("configure") as admin:
        for name in ["HR\n:white_check_mark: absync: every destination recovered", "HR\x00", "HR\x1b[2J"]:
            refused = admin.post("/api/v1/destinations", json={**body, "name": name})
            assert refused.status_code == 422, (name, refused.text)
            [error] = refused.json()["detail"]
            assert error["loc"] == ["body", "name"] and "control characters" in error["msg"], error
        assert admin.post("/api/v1/destinations", json={**body, "name": "HR Zürich (été)"}).status_code == 201


def test_destination_settings_hold_no_control_character_and_nest_boundedly(api: Api) -> None:
    """Free-form settings (the form's "Other settings" box) are stored in PostgreSQL's JSON, which
    refuses a NUL, and reach logs and headers; nesting is walked without recursion."""
    deep: list[object] = []
    inner = deep
    for _ in range(500):
        inner.append([])
        inner = inner[0]  # type: ignore[assignment]
    url = {"url": "http://127.0.0.1:9/"}
    refused = {
        "NUL in a value": ({**url, "auth_header_name": "X-Key\x00"}, "settings.auth_header_name"),
        "escape in a nested value": ({**url, "extra": {"note": ["ok", "\x1b[2J"]}}, "settings.extra.note[1]"),
        "control character in a key": ({**url, "a\x07b": 1}, "a key"),
        "nested 500 deep": ({**url, "deep": deep}, "deeper than 20 levels"),
    }
    body = {"tenant": "acme", "name": "settings probe", "kind": "http"}
    with api.client("configure") as admin:
        for case, (settings, said) in refused.items():
            answer = admin.post(
                "/api/v1/destinations", json={**body, "id": "dst-probe", "settings": settings}
            )
            assert answer.status_code == 422, (case, answer.text)
            assert said in answer.text, (case, answer.text)
        multi_line = {**url, "note": "line one\nline two\tend"}
        kept = admin.post("/api/v1/destinations", json={**body, "id": "dst-probe", "settings": multi_line})
        assert kept.status_code == 201, kept.text
        assert admin.get("/api/v1/destinations/dst-probe").json()["settings"]["note"] == multi_line["note"]
        assert admin.get("/api/v1/audit?destination=dst-probe").json()["items"][0]["action"] == "create"
