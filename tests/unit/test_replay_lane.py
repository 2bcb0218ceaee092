"""The replay lane's rule (processors/delivery/replay_lane.py), as a pure state machine."""

from __future__ import annotations

from processors.delivery.replay_lane import ReplayLane

TOPIC = "p.deliveries.replay"


def test_the_lane_closes_while_live_work_is_busy_and_reopens_when_it_leaves_room() -> None:
    lane = ReplayLane(TOPIC, concurrency=8)  # live room 2, budget 8
    assigned = {(TOPIC, 0), (TOPIC, 1), ("p.deliveries", 0)}
    assert lane.update(live_in_flight=0, replay_in_flight=0) and lane.paused(assigned) == set()
    assert not lane.update(live_in_flight=3, replay_in_flight=0)
    assert lane.paused(assigned) == {(TOPIC, 0), (TOPIC, 1)}, "only the replay partitions pause"
    assert not lane.take()
    assert lane.update(live_in_flight=2, replay_in_flight=0)


def test_the_lane_hands_out_at_most_its_budget_and_refills_at_half() -> None:
    lane = ReplayLane(TOPIC, concurrency=4)
    lane.update(0, 0)
    assert [lane.take() for _ in range(5)] == [True, True, True, True, False]
    assert not lane.update(0, 4)  # full
    assert not lane.update(0, 3)  # not yet back to half: no flapping on every record
    assert lane.update(0, 2)
    assert [lane.take() for _ in range(3)] == [True, True, False]


def test_one_slot_still_lets_replays_through_when_live_is_idle() -> None:
    lane = ReplayLane(TOPIC, concurrency=1)
    assert lane.update(0, 0) and lane.take() and not lane.take()
    assert lane.update(1, 0), "one live record in flight is within the room of one slot"
