"""The delivery worker's per-key state, as written to its changelog."""

from __future__ import annotations

import dataclasses
import json

from processors.delivery import KeyState


def test_key_state_is_written_with_every_field_and_read_back() -> None:
    """``to_bytes`` names the fields one by one (for speed): a field added later must not be lost."""
    state = KeyState(
        record="cmVjb3Jk", delivery_id="d-1", version=3, attempts=2, next_stage=1, status="ERROR"
    )

    assert json.loads(state.to_bytes()) == dataclasses.asdict(state)
    assert KeyState.from_bytes(state.to_bytes()) == state
