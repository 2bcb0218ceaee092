"""The supersede rule (:func:`processors.delivery.state.admit`) as a table, no broker: which delivery
records of a key are sent, with which state, and which are superseded or dropped."""

from __future__ import annotations

import pytest

from processors.delivery.state import MANUAL, Drop, KeyState, Send, Stale, admit
from schemas.codec import codec_for
from schemas.delivery import Delivery, Status
from tests.connectors.deliveries import make_delivery


def encoded(d: Delivery) -> bytes:
    return codec_for("Delivery").encode(d.to_avro())


def state_of(d: Delivery, *, status: Status | str = Status.PENDING, next_stage: int = 0) -> KeyState:
    s = KeyState.of(d, encoded(d))
    s.status = status if isinstance(status, str) else status.value
    s.next_stage = next_stage
    return s


V1, V2 = make_delivery(version=1), make_delivery(version=2)


def test_the_first_delivery_of_a_key_is_saved_then_sent() -> None:
    admission = admit(None, V1, 0, encoded(V1))

    assert admission == Send(KeyState.of(V1, encoded(V1)), save_first=True, supersedes=None)
    assert admission.state.delivery().to_avro() == codec_for("Delivery").decode(encoded(V1))


@pytest.mark.parametrize("status", [Status.PENDING, Status.ERROR])
def test_a_newer_delivery_supersedes_a_latest_that_was_not_done(status: Status) -> None:
    previous = state_of(V1, status=status, next_stage=2)

    admission = admit(previous, V2, 0, encoded(V2))

    assert admission == Send(KeyState.of(V2, encoded(V2)), save_first=True, supersedes=previous)


@pytest.mark.parametrize("status", [Status.SUCCESSFUL.value, Status.SUPERSEDED.value, MANUAL])
def test_a_newer_delivery_after_a_done_one_supersedes_nothing(status: str) -> None:
    admission = admit(state_of(V1, status=status), V2, 0, encoded(V2))

    assert admission == Send(KeyState.of(V2, encoded(V2)), save_first=True, supersedes=None)


def test_an_older_delivery_is_stale_and_never_sent() -> None:
    assert admit(state_of(V2), V1, 0, encoded(V1)) == Stale()


def test_the_same_delivery_read_again_starts_over_without_superseding_itself() -> None:
    """A record handled again after a crash: same delivery id, same version."""
    admission = admit(state_of(V1, status=Status.ERROR, next_stage=1), V1, 0, encoded(V1))

    assert admission == Send(KeyState.of(V1, encoded(V1)), save_first=True, supersedes=None)


def test_the_expected_retry_of_the_latest_is_sent_with_the_stored_state() -> None:
    stored = state_of(V2, next_stage=2)
    retry = V2.evolve(stage=2, attempt=2)

    assert admit(stored, retry, 2, encoded(retry)) == Send(stored, save_first=False, supersedes=None)


def test_a_retry_of_a_superseded_delivery_is_dropped() -> None:
    retry = V1.evolve(stage=1, attempt=1)

    assert isinstance(admit(state_of(V2, next_stage=1), retry, 1, encoded(retry)), Drop)


@pytest.mark.parametrize(
    ("next_stage", "stage"),
    [(0, 1), (2, 1), (1, 2)],
    ids=["cancelled-or-done", "duplicate-of-an-earlier-stage", "not-yet-expected"],
)
def test_a_retry_that_is_not_the_expected_stage_is_dropped(next_stage: int, stage: int) -> None:
    retry = V2.evolve(stage=stage, attempt=stage)

    assert isinstance(admit(state_of(V2, next_stage=next_stage), retry, stage, encoded(retry)), Drop)


def test_a_retry_without_state_is_sent_as_the_best_knowledge_expecting_its_own_stage() -> None:
    retry = V2.evolve(stage=3, attempt=3)

    admission = admit(None, retry, 3, encoded(retry))

    assert isinstance(admission, Send)
    assert (admission.save_first, admission.supersedes) == (False, None)
    assert (admission.state.delivery_id, admission.state.next_stage, admission.state.attempts) == (
        retry.delivery_id,
        3,
        3,
    )


def test_admission_does_not_change_the_stored_state() -> None:
    stored = state_of(V1, status=Status.ERROR, next_stage=1)
    before = stored.to_bytes()

    admit(stored, V2, 0, encoded(V2))
    admit(stored, V1.evolve(stage=1), 1, encoded(V1.evolve(stage=1)))

    assert stored.to_bytes() == before
