"""The delivery worker's per-key memory of the mailbox a destination holds an absence under
(``KeyState.held_email``): what it is after each outcome, and how a state saved before it existed is
read."""

from __future__ import annotations

import json

from processors.delivery.state import KeyState, held_after
from schemas.codec import codec_for
from schemas.delivery import Operation, Status
from schemas.models import AbsenceStatus, ChangeKind
from tests.connectors.deliveries import make_delivery


def saved_before_held_email(status: str, operation: Operation) -> bytes:
    delivery = make_delivery(email="jane@acme.com", operation=operation)
    state = KeyState.of(delivery, codec_for("Delivery").encode(delivery.to_avro()))
    state.status = status
    fields = json.loads(state.to_bytes())
    del fields["held_email"]
    return json.dumps(fields).encode()


def test_an_upsert_holds_its_email_a_delete_none() -> None:
    assert held_after(make_delivery(email="jane@acme.com")) == "jane@acme.com"
    assert held_after(make_delivery(email="")) is None
    cancelled = make_delivery(change=ChangeKind.CANCELLED, status=AbsenceStatus.CANCELLED)
    assert held_after(cancelled) is None


def test_a_state_saved_before_held_email_is_read_from_its_record() -> None:
    done = KeyState.from_bytes(saved_before_held_email(Status.SUCCESSFUL.value, Operation.UPSERT))
    assert done.held_email == "jane@acme.com"
    manual = KeyState.from_bytes(saved_before_held_email("MANUAL", Operation.UPSERT))
    assert manual.held_email == "jane@acme.com"
    failed = KeyState.from_bytes(saved_before_held_email(Status.ERROR.value, Operation.UPSERT))
    assert failed.held_email is None
    deleted = KeyState.from_bytes(saved_before_held_email(Status.SUCCESSFUL.value, Operation.DELETE))
    assert deleted.held_email is None


def test_a_field_of_a_later_release_is_ignored_and_held_email_round_trips() -> None:
    delivery = make_delivery()
    state = KeyState.of(delivery, codec_for("Delivery").encode(delivery.to_avro()))
    state.held_email = "jane@acme.com"
    fields = json.loads(state.to_bytes())
    fields["added_later"] = 1
    read = KeyState.from_bytes(json.dumps(fields).encode())
    assert read == state
