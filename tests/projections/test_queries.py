"""The read side used by the web API, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.engine import Engine

from projections import queries
from projections.exceptions import BadCursorError
from schemas.delivery import Status
from tests.projections.helpers import apply, at, fact, status_records


@pytest.fixture
def filled(engine: Engine) -> Engine:
    """Seven deliveries; dlv_3 and dlv_4 share updated_at (cursor ties)."""
    facts = [
        fact("dlv_1", Status.SUCCESSFUL, seq=0, when=1, attempt=1, employee=("Jane Doe", "jane@acme.com")),
        fact(
            "dlv_2",
            Status.ERROR,
            seq=0,
            when=2,
            attempt=1,
            error="404 no mailbox",
            employee=("John Roe", None),
        ),
        fact("dlv_3", Status.PENDING, seq=0, when=3, absence="abs_3", dates=("2026-12-20", "2026-12-24")),
        fact(
            "dlv_4",
            Status.PENDING,
            seq=0,
            when=3,
            destination="dst_2",
            employee=("Ann Lee", "ann.LEE@acme.com"),
        ),
        fact("dlv_5", Status.ERROR, seq=0, when=5, attempt=2, error="500 boom", destination="dst_1"),
        fact("dlv_6", Status.SUCCESSFUL, seq=0, when=6, attempt=1, tenant="globex", destination="dst_9"),
        fact("dlv_7", Status.SUPERSEDED, seq=0, when=7, dates=("2026-11-01", "2026-11-30")),
    ]
    apply(engine, status_records(facts))
    return engine


def ids(page: queries.Page) -> list[str]:
    return [item.delivery_id for item in page.items]


def test_list_is_newest_first_and_scoped_to_the_tenant(filled: Engine) -> None:
    assert ids(queries.list_deliveries(filled, tenant="acme")) == [
        "dlv_7",
        "dlv_5",
        "dlv_4",
        "dlv_3",
        "dlv_2",
        "dlv_1",
    ]
    assert ids(queries.list_deliveries(filled, tenant="globex")) == ["dlv_6"]
    assert len(queries.list_deliveries(filled, tenant=None).items) == 7


def test_cursor_pages_through_everything_once_even_with_ties(filled: Engine) -> None:
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = queries.list_deliveries(filled, tenant=None, cursor=cursor, limit=2)
        seen += ids(page)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ["dlv_7", "dlv_6", "dlv_5", "dlv_4", "dlv_3", "dlv_2", "dlv_1"]


def test_filters(filled: Engine) -> None:
    def listed(**filters: object) -> list[str]:
        return ids(queries.list_deliveries(filled, tenant="acme", **filters))  # type: ignore[arg-type]

    assert listed(status="error") == ["dlv_5", "dlv_2"]
    assert listed(destination_id="dst_2") == ["dlv_4"]
    assert listed(employee="jane") == ["dlv_7", "dlv_5", "dlv_3", "dlv_1"]
    assert listed(employee="ann.lee@") == ["dlv_4"]  # email, case-insensitive
    assert listed(employee="ROE") == ["dlv_2"]
    assert listed(employee="%") == []  # LIKE wildcards are literal
    assert listed(absence_id="abs_3") == ["dlv_3"]
    assert listed(date_from=dt.date(2026, 12, 4)) == ["dlv_3"]  # ends before: excluded
    assert listed(date_to=dt.date(2026, 11, 15)) == ["dlv_7"]
    assert listed(date_from=dt.date(2026, 12, 3), date_to=dt.date(2026, 12, 20)) == [
        "dlv_5",
        "dlv_4",
        "dlv_3",
        "dlv_2",
        "dlv_1",
    ]


def test_a_foreign_cursor_is_refused(filled: Engine) -> None:
    with pytest.raises(BadCursorError):
        queries.list_deliveries(filled, tenant=None, cursor="not-a-cursor")


def test_get_delivery_hides_other_tenants(filled: Engine) -> None:
    assert queries.get_delivery(filled, "dlv_6", tenant="acme") is None
    detail = queries.get_delivery(filled, "dlv_6", tenant="globex")
    assert detail is not None and detail.delivery.status == "SUCCESSFUL"
    assert queries.get_delivery(filled, "dlv_nope", tenant=None) is None


def test_count_by_status(filled: Engine) -> None:
    assert queries.count_by_status(filled, tenant="acme") == {
        "SUCCESSFUL": 1,
        "ERROR": 2,
        "PENDING": 2,
        "SUPERSEDED": 1,
    }
    assert queries.count_by_status(filled, tenant=None, destination_id="dst_2") == {"PENDING": 1}


def test_destination_health(filled: Engine) -> None:
    health = queries.destination_health(filled, "dst_1")
    assert health.success_rate == pytest.approx(1 / 3)  # dlv_1 ok, dlv_2 and dlv_5 failed
    assert (health.last_error, health.last_error_at) == ("500 boom", at(5))
    assert queries.destination_health(filled, "dst_2") == queries.DestinationHealth(None, None, None)
