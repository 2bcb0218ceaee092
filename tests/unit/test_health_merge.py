"""The destination health rule (projections.health.merge_health), over every order of arrival.

Oracle, from the documented rule: the failing period starts at the first failure after the last
success (none if no failure came after it). Applied in order of time, the projection finds exactly
that; in any other order it may find a later start, never an earlier one, and it is failing exactly
when the oracle is.
"""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from projections.health import merge_health
from schemas.delivery import Attempt, DeliveryStatus, Status

T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)


def fact(seconds: int, ok: bool, n: int) -> DeliveryStatus:
    at = T0 + dt.timedelta(seconds=seconds)
    record = Attempt(
        n, at, 1.0, "PUT", "https://x.example/a", {}, "", 200 if ok else 503, {}, None, None if ok else "503"
    )
    return DeliveryStatus(
        status_id=f"d{n}:1",
        delivery_id=f"d{n}",
        destination_id="dst",
        tenant="acme",
        absence_id=f"a{n}",
        version=1,
        change="approved",
        operation="UPSERT",
        employee_id="e",
        employee_name="E",
        employee_email=None,
        start_date="2026-12-01",
        end_date="2026-12-01",
        status=Status.SUCCESSFUL if ok else Status.PENDING,
        trigger="automatic",
        attempt=1,
        occurred_at=at,
        attempt_record=record,
    )


def oracle(facts: list[DeliveryStatus]) -> dt.datetime | None:
    successes = [f.occurred_at for f in facts if f.status == Status.SUCCESSFUL]
    last = max(successes, default=None)
    after = [
        f.occurred_at
        for f in facts
        if f.status != Status.SUCCESSFUL and (last is None or f.occurred_at > last)
    ]
    return min(after, default=None)


EVENTS = st.lists(
    st.tuples(st.integers(0, 10_000), st.booleans()), min_size=1, max_size=30, unique_by=lambda e: e[0]
)


@settings(max_examples=300, deadline=None)
@given(events=EVENTS, data=st.data())
def test_failing_since_is_exact_in_order_and_never_too_early_in_any_order(
    events: list[tuple[int, bool]], data: st.DataObject
) -> None:
    facts = [fact(seconds, ok, n) for n, (seconds, ok) in enumerate(events)]
    truth = oracle(facts)
    row = None
    for each in sorted(facts, key=lambda f: f.occurred_at):
        row = merge_health(row, each)
    assert row is not None and row["failing_since"] == truth
    shuffled = data.draw(st.permutations(facts))
    row = None
    for each in shuffled:
        row = merge_health(row, each)
    assert row is not None
    assert (row["failing_since"] is None) == (truth is None)
    if truth is not None:
        assert truth <= row["failing_since"] <= row["last_failure_at"]
    assert row["successes"] + row["failures"] == len(facts)
