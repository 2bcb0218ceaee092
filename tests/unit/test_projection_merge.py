"""The projection's merge rule (projections/projector.py ``merge``) as a pure function, no database.

The rule (the projector's module docstring): a row keeps the status of the fact with the greatest
``occurred_at`` (ties: the later record); once an operator marked the delivery processed (``manual``
SUCCESSFUL), an ``automatic`` fact no longer changes the status, only an operator ``retry`` or
``replay`` does; every fact counts for ``attempt_count`` (the greatest attempt) and
``created_at``/``updated_at`` (first/last ``occurred_at``); ``last_error`` is the latest error,
cleared by a SUCCESSFUL row or a later success, kept by a PENDING or SUPERSEDED winner without one.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.projector import merge
from schemas.delivery import DeliveryStatus, Status
from tests.projections.helpers import at, fact

Row = dict[str, Any]


def fold(facts: Sequence[DeliveryStatus]) -> Row:
    """The row after the facts, applied in the order given (checking that merge changes no input)."""
    row: Row | None = None
    for f in facts:
        before = copy.deepcopy(row)
        merged = merge(row, f)
        assert row == before, "merge modified the row it was given"
        row = merged
    assert row is not None
    return row


@st.composite
def fact_sets(draw: st.DrawFn, manual: bool = False) -> list[DeliveryStatus]:
    """Facts of one delivery with distinct ``occurred_at``, in occurred_at order; ``manual``: some
    SUCCESSFUL facts may be an operator's mark."""
    times = sorted(draw(st.sets(st.integers(0, 10_000), min_size=1, max_size=8)))
    facts = []
    for seq, when in enumerate(times):
        status = draw(st.sampled_from(list(Status)))
        attempt = draw(st.integers(0, 6))
        facts.append(
            fact(
                status=status,
                seq=seq,
                when=when,
                attempt=attempt,
                attempted=attempt > 0 and draw(st.booleans()),
                error=draw(st.sampled_from([None, f"error at {when}"])),
                trigger=draw(st.sampled_from(["automatic", "retry", "replay"])),
                manual=manual and status == Status.SUCCESSFUL and draw(st.booleans()),
                next_retry_at=draw(st.sampled_from([None, at(when + 60)])),
            )
        )
    return facts


# -- properties -----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(facts=fact_sets(), data=st.data())
def test_the_row_does_not_depend_on_the_order_the_facts_arrive_in(
    facts: list[DeliveryStatus], data: st.DataObject
) -> None:
    """Without operator marks: every column, ``last_error`` included."""
    arrival = data.draw(st.permutations(facts), label="arrival order")
    row = fold(arrival)
    assert row == fold(facts)
    latest = facts[-1]
    assert (row["status"], row["status_at"], row["trigger"]) == (
        latest.status.value,
        latest.occurred_at,
        latest.trigger,
    )


@settings(max_examples=200, deadline=None)
@given(facts=fact_sets(), data=st.data())
def test_last_error_does_not_depend_on_the_order_the_facts_arrive_in(
    facts: list[DeliveryStatus], data: st.DataObject
) -> None:
    arrival = data.draw(st.permutations(facts), label="arrival order")
    assert fold(arrival)["last_error"] == fold(facts)["last_error"]


@settings(max_examples=200, deadline=None)
@given(facts=fact_sets(manual=True), data=st.data())
def test_every_fact_counts_for_attempts_and_times_whatever_wins_and_whatever_the_order(
    facts: list[DeliveryStatus], data: st.DataObject
) -> None:
    arrival = data.draw(st.permutations(facts), label="arrival order")
    row = fold(arrival)
    numbers = [f.attempt for f in facts] + [f.attempt_record.number for f in facts if f.attempt_record]
    assert row["attempt_count"] == max(numbers)
    assert row["created_at"] == min(f.occurred_at for f in facts)
    assert row["updated_at"] == max(f.occurred_at for f in facts)


@settings(max_examples=300, deadline=None)
@given(facts=fact_sets(manual=True))
def test_in_occurred_at_order_a_manual_success_holds_until_an_operator_retry_or_replay(
    facts: list[DeliveryStatus],
) -> None:
    """Facts arriving in the order they happened (the worker writes one delivery's facts in order):
    the row shows the latest fact, except that after a manual SUCCESSFUL only a ``retry`` or
    ``replay`` fact moves it."""
    row: Row | None = None
    shown: DeliveryStatus | None = None
    for f in facts:
        row = merge(row, f)
        marked = shown is not None and shown.manual and shown.status == Status.SUCCESSFUL
        if not marked or f.trigger in ("retry", "replay"):
            shown = f
        assert shown is not None
        assert (row["status"], row["manual"], row["trigger"], row["status_at"]) == (
            shown.status.value,
            shown.manual,
            shown.trigger,
            shown.occurred_at,
        )


# -- the status ------------------------------------------------------------------------------------


def test_the_latest_fact_wins_and_a_late_older_one_does_not_move_the_row_backwards() -> None:
    row = fold(
        [
            fact(status=Status.SUCCESSFUL, seq=1, when=10, attempt=1),
            fact(status=Status.PENDING, seq=0, when=5, attempt=0, next_retry_at=at(60)),  # late
        ]
    )
    assert (row["status"], row["status_at"], row["next_retry_at"]) == ("SUCCESSFUL", at(10), None)
    assert (row["created_at"], row["updated_at"]) == (at(5), at(10))


def test_on_equal_occurred_at_the_fact_arriving_later_wins() -> None:
    first = fact(status=Status.ERROR, seq=0, when=10, attempt=1, error="503")
    second = fact(status=Status.SUCCESSFUL, seq=1, when=10, attempt=1)
    assert fold([first, second])["status"] == "SUCCESSFUL"
    assert fold([second, first])["status"] == "ERROR"


def test_a_manual_success_is_not_undone_by_a_later_automatic_fact() -> None:
    row = fold(
        [
            fact(status=Status.ERROR, seq=0, when=0, attempt=1, attempted=True, error="503"),
            fact(status=Status.SUCCESSFUL, seq=1, when=100, attempt=1, manual=True),
            fact(status=Status.ERROR, seq=2, when=300, attempt=2, attempted=True, error="503 again"),
            fact(status=Status.PENDING, seq=3, when=400, attempt=2, next_retry_at=at(500)),
        ]
    )
    assert (row["status"], row["manual"], row["status_at"]) == ("SUCCESSFUL", True, at(100))
    assert (row["last_error"], row["next_retry_at"]) == (None, None)
    assert (row["attempt_count"], row["updated_at"]) == (2, at(400))  # the facts still count


@pytest.mark.parametrize("trigger", ["retry", "replay"])
def test_a_manual_success_is_undone_by_a_later_operator_retry_or_replay(trigger: str) -> None:
    row = fold(
        [
            fact(status=Status.SUCCESSFUL, seq=0, when=100, attempt=1, manual=True),
            fact(status=Status.ERROR, seq=1, when=200, attempt=2, error="503", trigger=trigger),
        ]
    )
    assert (row["status"], row["manual"], row["trigger"], row["last_error"]) == (
        "ERROR",
        False,
        trigger,
        "503",
    )
    # and from there on the automatic facts count again
    row = merge(row, fact(status=Status.SUCCESSFUL, seq=2, when=300, attempt=3))
    assert (row["status"], row["trigger"]) == ("SUCCESSFUL", "automatic")


def test_an_operator_retry_older_than_the_mark_does_not_undo_it() -> None:
    row = fold(
        [
            fact(status=Status.SUCCESSFUL, seq=1, when=100, attempt=1, manual=True),
            fact(status=Status.ERROR, seq=0, when=50, attempt=1, error="503", trigger="retry"),
        ]
    )
    assert (row["status"], row["manual"]) == ("SUCCESSFUL", True)


# -- last_error -----------------------------------------------------------------------------------


def test_last_error_is_the_winners_error_kept_while_waiting_and_cleared_by_a_success() -> None:
    facts = [
        fact(status=Status.ERROR, seq=0, when=0, attempt=1, error="503"),
        fact(status=Status.PENDING, seq=1, when=10, attempt=1, next_retry_at=at(60)),
        fact(status=Status.SUPERSEDED, seq=2, when=20, attempt=1),
    ]
    assert fold(facts[:1])["last_error"] == "503"
    assert fold(facts[:2])["last_error"] == "503"  # why it is waiting
    assert fold(facts)["last_error"] == "503"  # why it never went out
    row = merge(fold(facts[:2]), fact(status=Status.ERROR, seq=3, when=30, attempt=2, error="429"))
    assert row["last_error"] == "429"  # the newer error replaces it
    row = merge(row, fact(status=Status.SUCCESSFUL, seq=4, when=40, attempt=3, error="ignored"))
    assert row["last_error"] is None
    row = merge(row, fact(status=Status.PENDING, seq=5, when=50, attempt=3))
    assert row["last_error"] is None  # nothing to keep after a success


def test_a_pending_with_its_own_error_shows_it() -> None:
    row = fold(
        [
            fact(status=Status.ERROR, seq=0, when=0, attempt=1, error="503"),
            fact(status=Status.PENDING, seq=1, when=10, attempt=1, error="destination throttled"),
        ]
    )
    assert row["last_error"] == "destination throttled"


def test_the_error_comes_from_the_fact_else_from_its_attempt_record() -> None:
    recorded = fact(status=Status.ERROR, seq=0, when=0, attempt=1, attempted=True, error="503")
    only_record = replace(recorded, error=None)
    assert fold([only_record])["last_error"] == "503"  # the attempt record's error
    both = replace(recorded, error="the summary")
    assert fold([both])["last_error"] == "the summary"


def test_a_losing_fact_leaves_last_error_alone() -> None:
    row = fold(
        [
            fact(status=Status.ERROR, seq=1, when=10, attempt=2, error="429"),
            fact(status=Status.ERROR, seq=0, when=5, attempt=1, error="503"),  # late, older
        ]
    )
    assert (row["last_error"], row["attempt_count"]) == ("429", 2)


# -- attempt_count ---------------------------------------------------------------------------------


def test_attempt_count_is_the_greatest_attempt_of_any_fact_or_attempt_record() -> None:
    row = fold(
        [
            fact(status=Status.ERROR, seq=0, when=0, attempt=3, attempted=True, error="503"),
            fact(status=Status.SUCCESSFUL, seq=1, when=10, attempt=1),
        ]
    )
    assert row["attempt_count"] == 3  # a later fact with a lower attempt does not lower it
    recorded = fact(status=Status.ERROR, seq=2, when=20, attempt=4, attempted=True, error="x")
    assert recorded.attempt_record is not None
    record_only = replace(recorded, attempt=0)
    assert merge(row, record_only)["attempt_count"] == 4
