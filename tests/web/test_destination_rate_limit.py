"""The per-destination rate limit over the API (issue 16 item 6): set, shown, changed, lifted,
audited, carried in the destination's Kafka record; out of bounds, a 422 that says why."""

from __future__ import annotations

from tests.web.conftest import Api
from tests.web.test_destinations import body, destination_records


def test_a_rate_limit_is_set_shown_audited_and_bounded(api: Api) -> None:
    with api.client("configure") as admin:
        created = admin.post(
            "/api/v1/destinations", json={"id": "dst-r", "tenant": "acme", **body(rate_limit=5)}
        )
        assert created.status_code == 201, created.text
        assert created.json()["rate_limit"] == 5.0
        for bad, reason in (
            (0, "between 0.1 and 1000"),
            (0.01, "between 0.1 and 1000"),
            (1001, "between 0.1 and 1000"),
            ("5", "a number of requests per second"),
            (True, "a number of requests per second"),
        ):
            refused = admin.put("/api/v1/destinations/dst-r", json=body(rate_limit=bad))
            assert refused.status_code == 422 and reason in refused.text, (bad, refused.text)
        changed = admin.put("/api/v1/destinations/dst-r", json=body(rate_limit=0.5))
        assert changed.status_code == 200 and changed.json()["rate_limit"] == 0.5
        assert admin.post("/api/v1/destinations/dst-r/disable").json()["rate_limit"] == 0.5  # kept
        lifted = admin.put("/api/v1/destinations/dst-r", json=body())  # a PUT is the whole configuration
        assert lifted.json()["rate_limit"] is None
        assert admin.get("/api/v1/destinations/dst-r").json()["rate_limit"] is None
        audit = admin.get("/api/v1/destinations/dst-r/audit").json()
    assert [e["changes"].get("rate_limit") for e in audit if e["action"] == "update"] == [
        {"from": 0.5, "to": None},
        {"from": 5.0, "to": 0.5},
    ]
    assert [d.rate_limit for _, d in destination_records(api)] == [5.0, 0.5, 0.5, None]
