"""The audit log over real HTTP (SQLite and PostgreSQL, real broker): destination writes, resync,
Retry and Mark as processed are recorded with the token's name; filters by destination and
operator; pages; configure right only; a tenant-limited token sees its tenant's rows only."""

from __future__ import annotations

from typing import Any

from schemas.delivery import Status
from tests.web.conftest import Api, fact


def hook_body(**changes: Any) -> dict[str, Any]:
    return {
        "name": "Hook",
        "kind": "http",
        "settings": {"url": "http://127.0.0.1:9/hook"},
        "secrets": {"signing_secrets": "whsec_" + "b" * 32},
        **changes,
    }


def actions(page: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(e["actor"], e["action"], e["destination_id"]) for e in page["items"]]


def test_writes_and_commands_are_recorded_and_filtered(api: Api) -> None:
    failed = fact(destination_id="acme:hook", status=Status.ERROR)
    pending = fact(destination_id="acme:hook", status=Status.PENDING)
    api.seed(failed, pending)
    with api.client("acme-configure") as admin, api.client("view") as viewer:
        assert admin.post("/api/v1/destinations", json={"id": "acme:hook", **hook_body()}).status_code == 201
        assert admin.put("/api/v1/destinations/acme:hook", json=hook_body(name="Renamed")).status_code == 200
        assert admin.post("/api/v1/destinations/acme:hook/resync").status_code == 202
        assert admin.post("/api/v1/destinations/acme:hook/disable").status_code == 200
        assert admin.post("/api/v1/destinations/acme:hook/enable").status_code == 200  # + a catch-up
        assert viewer.post(f"/api/v1/deliveries/{failed.delivery_id}/retry").status_code == 202
        assert viewer.post(f"/api/v1/deliveries/{pending.delivery_id}/mark-processed").status_code == 202
        assert (
            admin.post(
                "/api/v1/destinations", json={"id": "acme:other", **hook_body(name="Other")}
            ).status_code
            == 201
        )

    with api.client("configure") as admin:
        everything = admin.get("/api/v1/audit").json()
        hook_only = admin.get("/api/v1/audit", params={"destination": "acme:hook"}).json()
        by_viewer = admin.get("/api/v1/audit", params={"actor": "VIEWER"}).json()
        first = admin.get("/api/v1/audit", params={"limit": 3}).json()
        second = admin.get("/api/v1/audit", params={"limit": 3, "before": first["next_cursor"]}).json()
    assert actions(everything) == [
        ("acme admin", "create", "acme:other"),
        ("viewer", "mark-processed", "acme:hook"),
        ("viewer", "retry", "acme:hook"),
        ("acme admin", "enable", "acme:hook"),
        ("acme admin", "disable", "acme:hook"),
        ("acme admin", "resync", "acme:hook"),
        ("acme admin", "update", "acme:hook"),
        ("acme admin", "create", "acme:hook"),
    ]
    assert everything["next_cursor"] is None
    assert [a for _, a, _ in actions(hook_only)] == [
        "mark-processed",
        "retry",
        "enable",
        "disable",
        "resync",
        "update",
        "create",
    ]
    assert actions(by_viewer) == [("viewer", "mark-processed", "acme:hook"), ("viewer", "retry", "acme:hook")]
    retry = by_viewer["items"][1]
    assert retry["changes"]["delivery_id"] == failed.delivery_id
    assert retry["changes"]["status"] == "ERROR"
    assert actions(first) + actions(second) == actions(everything)[:6]
    assert second["next_cursor"] is not None
    assert "b" * 32 not in str(everything)  # no secret value in the log


def test_configure_right_and_tenant_scope(api: Api) -> None:
    with api.client("configure") as admin:
        body = {"id": "globex:hook", "tenant": "globex", **hook_body()}
        assert admin.post("/api/v1/destinations", json=body).status_code == 201
        assert (
            admin.post(
                "/api/v1/destinations", json={"id": "acme:hook", **hook_body(), "tenant": "acme"}
            ).status_code
            == 201
        )
        assert {e["destination_id"] for e in admin.get("/api/v1/audit").json()["items"]} == {
            "globex:hook",
            "acme:hook",
        }
    with api.client("acme-configure") as acme:
        assert [e["destination_id"] for e in acme.get("/api/v1/audit").json()["items"]] == ["acme:hook"]
        assert acme.get("/api/v1/audit", params={"destination": "globex:hook"}).json()["items"] == []
    with api.client("view") as viewer:
        assert viewer.get("/api/v1/audit").status_code == 403
    with api.client() as anonymous:
        assert anonymous.get("/api/v1/audit").status_code == 401
