"""The delivery worker's per-key state, as written to its changelog."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

from processors.delivery import KeyState
from processors.delivery.state import Send, Stale, admit
from schemas.codec import codec_for
from schemas.delivery import Delivery, Trigger
from schemas.models import ChangeKind
from tests.delivery.harness import change


def test_key_state_is_written_with_every_field_and_read_back() -> None:
    """``to_bytes`` names the fields one by one (for speed): a field added later must not be lost."""
    state = KeyState(
        record="cmVjb3Jk", delivery_id="d-1", version=3, attempts=2, next_stage=1, status="ERROR"
    )

    assert json.loads(state.to_bytes()) == dataclasses.asdict(state)
    assert KeyState.from_bytes(state.to_bytes()) == state


def _latest(delivery: Delivery) -> KeyState:
    admission = admit(None, delivery, 0, codec_for("Delivery").encode(delivery.to_avro()))
    assert isinstance(admission, Send)
    return admission.state


def _admit(state: KeyState, delivery: Delivery) -> object:
    return admit(state, delivery, 0, codec_for("Delivery").encode(delivery.to_avro()))


def test_a_replayed_delivery_older_than_the_live_latest_is_stale() -> None:
    """Between the lanes: a lower version, or the same version written earlier (in the same
    millisecond the live one wins), is stale; written later, or within one lane, it is sent."""
    live = change("abs-1", 2, ChangeKind.UPDATED)
    state = _latest(live)
    ms = dt.timedelta(milliseconds=1)
    replay = change("abs-1", 2, ChangeKind.UPDATED).evolve(trigger=Trigger.REPLAY)
    assert isinstance(
        _admit(state, change("abs-1", 1, ChangeKind.APPROVED).evolve(trigger=Trigger.REPLAY)), Stale
    )
    assert isinstance(_admit(state, replay.evolve(created_at=live.created_at - ms)), Stale)
    assert isinstance(_admit(state, replay.evolve(created_at=live.created_at)), Stale)
    assert isinstance(_admit(state, replay.evolve(created_at=live.created_at + ms)), Send)
    assert isinstance(_admit(state, live), Send)  # the same delivery again (after a crash)
    # within the live lane the partition keeps the order: a same-version delivery is the newer
    assert isinstance(
        _admit(state, change("abs-1", 2, ChangeKind.CANCELLED).evolve(created_at=live.created_at - ms)), Send
    )
    # a live delivery after a replayed latest: written earlier is stale, in the same ms it wins
    replayed_state = _latest(replay)
    other = change("abs-1", 2, ChangeKind.CANCELLED)
    assert isinstance(_admit(replayed_state, other.evolve(created_at=replay.created_at - ms)), Stale)
    assert isinstance(_admit(replayed_state, other.evolve(created_at=replay.created_at)), Send)


def test_a_state_saved_before_the_lanes_reads_their_order_from_its_record() -> None:
    live = change("abs-1", 1, ChangeKind.APPROVED)
    fields = json.loads(_latest(live).to_bytes())
    del fields["created_ms"], fields["replayed"]
    old = KeyState.from_bytes(json.dumps(fields).encode())
    assert old.written() == (int(live.created_at.timestamp() * 1000), False)
    earlier = live.evolve(
        delivery_id="other", trigger=Trigger.REPLAY, created_at=live.created_at - dt.timedelta(seconds=1)
    )
    assert isinstance(_admit(old, earlier), Stale)
