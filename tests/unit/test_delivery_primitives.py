"""The delivery worker's generic primitives as pure state machines, no broker: the offset tracker
(what may be committed) and the key lanes (what may run at once).

Only their contract is tested (their docstrings and the worker's use of them), not their internals.
They live in ``streams/`` (:mod:`streams.offsets`, :mod:`streams.lanes`), generic, imported by the
delivery worker.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.lanes import KeyLanes
from streams.offsets import OffsetTracker

P0 = ("deliveries", 0)
P1 = ("deliveries", 1)
P2 = ("retry-1", 0)

# -- the offset tracker ---------------------------------------------------------------------------


@st.composite
def runs(draw: st.DrawFn) -> tuple[list[int], list[tuple[str, int]]]:
    """Offsets handed out in increasing order (with gaps: transaction markers, compaction) and an
    interleaving of ``start`` and ``done`` steps where each offset is done only after it started
    (some never are)."""
    gaps = draw(st.lists(st.integers(1, 3), min_size=1, max_size=25))
    first = draw(st.integers(0, 1_000))
    offsets = [first + sum(gaps[:i]) for i in range(len(gaps))]
    finishing = draw(st.permutations(offsets))
    finishing = finishing[: draw(st.integers(0, len(finishing)))]
    steps: list[tuple[str, int]] = []
    started, to_finish = 0, list(finishing)
    while started < len(offsets) or to_finish:
        startable = started < len(offsets)
        finishable = [o for o in to_finish if o in offsets[:started]]
        if startable and (not finishable or draw(st.booleans())):
            steps.append(("start", offsets[started]))
            started += 1
        elif finishable:
            offset = finishable[0]
            to_finish.remove(offset)
            steps.append(("done", offset))
        else:  # what is left to finish has not started: start it first
            steps.append(("start", offsets[started]))
            started += 1
    return offsets, steps


@settings(max_examples=300, deadline=None)
@given(run=runs(), data=st.data())
def test_the_committable_offset_is_the_lowest_offset_not_done_and_never_moves_back(
    run: tuple[list[int], list[tuple[str, int]]], data: st.DataObject
) -> None:
    """Safety whatever position the consumer reports; monotonic for the positions a consumer can
    report (past the last record handed out, not past the next one to be handed out)."""
    offsets, steps = run
    tracker = OffsetTracker()
    handed_out: list[int] = []
    done: set[int] = set()
    last = -1
    for step, offset in steps:
        if step == "start":
            tracker.started(P0, offset)
            handed_out.append(offset)
        else:
            tracker.done(P0, offset)
            done.add(offset)
        not_done = [o for o in handed_out if o not in done]

        anywhere = data.draw(st.integers(0, 3_000), label="any position")
        committed = tracker.committable({P0}, {P0: anywhere})[P0]
        assert not not_done or committed == min(not_done), "an offset not done would be committed"

        upcoming = offsets[len(handed_out)] if len(handed_out) < len(offsets) else handed_out[-1] + 5
        position = data.draw(st.integers(handed_out[-1] + 1, upcoming), label="position")
        committed = tracker.committable({P0}, {P0: position})[P0]
        assert committed == (min(not_done) if not_done else position)
        assert committed >= last, "the committable offset moved back"
        last = committed
        assert tracker.in_flight() == len(not_done)
        assert tracker.idle({P0}) == (set() if not_done else {P0})


def test_partitions_are_tracked_apart() -> None:
    tracker = OffsetTracker()
    tracker.started(P0, 10)
    tracker.started(P0, 11)
    tracker.started(P1, 4)
    tracker.done(P0, 11)
    tracker.done(P1, 4)
    assert tracker.committable({P0, P1}, {}) == {P0: 10, P1: 5}
    assert tracker.idle({P0, P1}) == {P1}


def test_idle_names_only_asked_partitions_that_had_records_and_have_none_pending() -> None:
    tracker = OffsetTracker()
    assert tracker.idle({P0, P1}) == set()  # nothing handed out yet: nothing to commit
    tracker.started(P0, 0)
    tracker.started(P1, 0)
    tracker.started(P2, 0)
    tracker.done(P1, 0)
    tracker.done(P2, 0)
    assert tracker.idle({P0, P1}) == {P1}  # P2 idle too, but not asked about
    assert tracker.idle({P0, P1, P2}) == {P1, P2}
    tracker.done(P0, 0)
    assert tracker.idle({P0, P1, P2}) == {P0, P1, P2}


def test_a_partition_never_handed_out_has_no_committable_offset() -> None:
    tracker = OffsetTracker()
    tracker.started(P0, 3)
    assert tracker.committable({P0, P1}, {P1: 40}) == {P0: 3}


def test_the_position_of_an_idle_partition_is_committed_past_transaction_markers() -> None:
    tracker = OffsetTracker()
    tracker.started(P0, 8)
    tracker.done(P0, 8)
    assert tracker.committable({P0}, {P0: 10}) == {P0: 10}  # 9 was a transaction marker
    assert tracker.committable({P0}, {P0: 5}) == {P0: 9}  # an older position never moves it back
    assert tracker.committable({P0}, {}) == {P0: 9}


def test_done_of_an_unknown_offset_or_partition_changes_nothing() -> None:
    tracker = OffsetTracker()
    tracker.done(P0, 5)
    assert tracker.committable({P0}, {}) == {}
    tracker.started(P0, 5)
    tracker.done(P0, 4)
    tracker.done(P1, 5)
    assert tracker.committable({P0}, {}) == {P0: 5}
    assert tracker.in_flight() == 1


def test_forget_drops_revoked_partitions_only_and_a_reassigned_one_starts_afresh() -> None:
    tracker = OffsetTracker()
    tracker.started(P0, 20)
    tracker.started(P0, 21)
    tracker.started(P1, 7)
    tracker.forget({P0})
    assert tracker.in_flight() == 1
    assert tracker.committable({P0, P1}, {}) == {P1: 7}
    assert tracker.idle({P0, P1}) == set()
    tracker.done(P0, 20)  # a job of the revoked partition finishing late
    assert tracker.committable({P0}, {}) == {}
    # assigned again, from its committed offset (lower than what was handed out before)
    tracker.started(P0, 15)
    assert tracker.committable({P0}, {}) == {P0: 15}
    tracker.done(P0, 15)
    assert tracker.committable({P0}, {}) == {P0: 16}


# -- the key lanes --------------------------------------------------------------------------------

Job = Callable[[], Awaitable[None]]


class Probe:
    """Records what runs: jobs enter and leave; the highest concurrency seen, overall and per group;
    ``violations``: two jobs of one key overlapping, a key's jobs starting out of submission order
    (recorded, not raised, so that a failing job cannot hide them by stopping its lane)."""

    def __init__(self) -> None:
        self.running: Counter[str] = Counter()  # per group
        self.peak: Counter[str] = Counter()
        self.peak_total = 0
        self.busy_keys: set[str] = set()
        self.started: list[tuple[str, int]] = []
        self.finished: list[tuple[str, int]] = []
        self.next_of: Counter[str] = Counter()
        self.violations: list[str] = []

    def job(self, key: str, group: str, number: int, hold: Callable[[], Awaitable[object]]) -> Job:
        async def run() -> None:
            if key in self.busy_keys:
                self.violations.append(f"two jobs of key {key} at once")
            if number != self.next_of[key]:
                self.violations.append(f"key {key}: job {number} started out of order")
            self.next_of[key] += 1
            self.busy_keys.add(key)
            self.running[group] += 1
            self.peak[group] = max(self.peak[group], self.running[group])
            self.peak_total = max(self.peak_total, sum(self.running.values()))
            self.started.append((key, number))
            try:
                await hold()
            finally:
                self.running[group] -= 1
                self.busy_keys.discard(key)
                self.finished.append((key, number))

        return run


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Liveness: wait (generously) until ``condition`` holds, letting the loop run."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout)


def yields(n: int) -> Callable[[], Awaitable[None]]:
    async def hold() -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    return hold


@settings(max_examples=150, deadline=None)
@given(
    total=st.integers(1, 6),
    share=st.integers(1, 4),
    jobs=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 6)), min_size=1, max_size=40
    ),  # (key number, yields the job takes)
)
def test_lanes_run_each_key_in_order_one_at_a_time_within_the_total_and_group_bounds(
    total: int, share: int, jobs: list[tuple[int, int]]
) -> None:
    async def scenario() -> Probe:
        lanes = KeyLanes(total, share)
        probe = Probe()
        numbers: Counter[str] = Counter()
        for key_number, n in jobs:
            key, group = f"k{key_number}", f"g{key_number % 3}"  # a key belongs to one group
            lanes.submit(key, group, probe.job(key, group, numbers[key], yields(n)))
            numbers[key] += 1
            await asyncio.sleep(0)  # submissions interleave with running jobs
        await eventually(lambda: len(probe.finished) == len(jobs))
        return probe

    probe = asyncio.run(scenario())
    assert probe.violations == []
    assert probe.peak_total <= total
    # a group may take a slot only while it holds less than 1/share of what the others leave
    assert all(peak <= max(1, total // share) for peak in probe.peak.values())
    for key in {key for key, _ in probe.started}:
        assert [n for k, n in probe.finished if k == key] == sorted(n for k, n in probe.finished if k == key)


async def test_a_group_whose_jobs_hang_holds_at_most_its_share_and_the_others_progress() -> None:
    lanes = KeyLanes(total=4, share=2)
    probe = Probe()
    release = asyncio.Event()
    for i in range(6):  # a destination hanging on every request, six absences
        lanes.submit(f"slow|{i}", "slow", probe.job(f"slow|{i}", "slow", 0, release.wait))
    await eventually(lambda: probe.running["slow"] == 2)
    for i in range(20):
        lanes.submit(f"fast-a|{i}", "fast-a", probe.job(f"fast-a|{i}", "fast-a", 0, yields(1)))
        lanes.submit(f"fast-b|{i}", "fast-b", probe.job(f"fast-b|{i}", "fast-b", 0, yields(2)))
    # eventually every other job is done, while the slow group still hangs
    await eventually(lambda: sum(1 for k, _ in probe.finished if k.startswith("fast")) == 40)
    assert probe.running["slow"] == 2
    assert not [k for k, _ in probe.finished if k.startswith("slow")]
    assert probe.peak["slow"] == 2
    assert probe.peak_total <= 4

    release.set()
    await eventually(lambda: len(probe.finished) == 46)
    assert probe.peak["slow"] == 2
    assert probe.violations == []


async def test_a_key_waits_for_its_previous_job_while_other_keys_of_its_group_run() -> None:
    lanes = KeyLanes(total=4, share=1)
    probe = Probe()
    first_done = asyncio.Event()
    lanes.submit("d|a", "d", probe.job("d|a", "d", 0, first_done.wait))
    lanes.submit("d|a", "d", probe.job("d|a", "d", 1, yields(0)))
    lanes.submit("d|b", "d", probe.job("d|b", "d", 0, yields(0)))
    await eventually(lambda: ("d|b", 0) in probe.finished)
    # b ran to the end with free slots left, and a's second job has still not started
    assert ("d|a", 1) not in probe.started
    first_done.set()
    await eventually(lambda: ("d|a", 1) in probe.finished)
    assert [n for k, n in probe.started if k == "d|a"] == [0, 1]
    assert probe.violations == []


async def test_a_key_submitted_again_after_its_lane_emptied_runs_again() -> None:
    lanes = KeyLanes(total=1, share=1)
    probe = Probe()
    lanes.submit("d|a", "d", probe.job("d|a", "d", 0, yields(1)))
    await eventually(lambda: len(probe.finished) == 1)
    lanes.submit("d|a", "d", probe.job("d|a", "d", 1, yields(1)))
    await eventually(lambda: len(probe.finished) == 2)
    assert probe.finished == [("d|a", 0), ("d|a", 1)]


async def test_drain_waits_for_the_running_jobs_and_drops_those_queued_behind_them() -> None:
    lanes = KeyLanes(total=2, share=1)
    probe = Probe()
    release = asyncio.Event()
    for key in ("d|a", "d|b"):
        for number in range(3):
            lanes.submit(key, "d", probe.job(key, "d", number, release.wait))
    await eventually(lambda: len(probe.started) == 2)

    drained = asyncio.create_task(lanes.drain())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not drained.done(), "drain returned while jobs still ran"
    release.set()
    await asyncio.wait_for(drained, 10)
    assert sorted(probe.started) == [("d|a", 0), ("d|b", 0)]
    assert sorted(probe.finished) == [("d|a", 0), ("d|b", 0)]

    # the lanes still work after a drain (the worker drains on revocation, then gets new records)
    lanes.submit("d|a", "d", probe.job("d|a", "d", 1, yields(0)))
    await eventually(lambda: ("d|a", 1) in probe.finished)


async def test_drain_drops_a_job_that_waits_for_a_slot() -> None:
    lanes = KeyLanes(total=1, share=1)
    probe = Probe()
    release = asyncio.Event()
    lanes.submit("d|a", "d", probe.job("d|a", "d", 0, release.wait))
    lanes.submit("d|b", "d", probe.job("d|b", "d", 0, release.wait))  # not started: no slot
    await eventually(lambda: len(probe.started) == 1)

    drained = asyncio.create_task(lanes.drain())
    for _ in range(20):
        await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(drained, 10)
    assert probe.started == [("d|a", 0)]
