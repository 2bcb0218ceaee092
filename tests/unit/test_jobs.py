"""The job helper shared by resync, Recover and bulk actions (absync/web/jobs.py), with real threads:
how many run per key, what is kept, what an audit failure or a failing job leaves."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from fastapi import HTTPException

from absync.web.jobs import Job, Jobs

WAIT = 30.0


class Held(Job[list[str]]):
    """A job that reports one step, then waits until released (or raises if told to)."""

    def __init__(self, release: threading.Event, fail: bool = False) -> None:
        super().__init__("held", [])
        self.release = release
        self.fail = fail

    def work(self, report: Callable[[list[str]], None], stop: threading.Event) -> list[str]:
        steps = ["started"]
        report(steps)
        self.release.wait(WAIT)
        if self.fail:
            raise RuntimeError("the broker went away")
        steps.append("done")
        return steps

    def snapshot(self, progress: list[str]) -> list[str]:
        return list(progress)


def test_one_running_per_key_gives_back_the_running_job() -> None:
    jobs: Jobs[Held] = Jobs()
    release = threading.Event()
    first, started = jobs.start("dst-1", lambda: Held(release))
    again, started_again = jobs.start("dst-1", lambda: Held(release))
    other, started_other = jobs.start("dst-2", lambda: Held(release))
    assert (started, started_again, started_other) == (True, False, True)
    assert again is first and other is not first
    with pytest.raises(HTTPException) as refused:
        jobs.start_or_refuse("dst-1", lambda: Held(release), lambda j: f"busy since {j.started_at}")
    assert refused.value.status_code == 409 and "busy since" in str(refused.value.detail)
    release.set()
    assert first.wait(WAIT) and other.wait(WAIT)
    assert first.progress == ["started", "done"] and first.error is None
    second, started = jobs.start("dst-1", lambda: Held(release))
    assert started and jobs.get("dst-1") is second and jobs.get("dst-1", first.job_id) is None  # keep=1
    assert second.wait(WAIT)


def test_several_running_per_key_and_a_bounded_history() -> None:
    jobs: Jobs[Held] = Jobs(running_at_most=2, keep=3)
    release = threading.Event()
    a = jobs.start_or_refuse("acme", lambda: Held(release), str)
    b = jobs.start_or_refuse("acme", lambda: Held(release), str)
    with pytest.raises(HTTPException):
        jobs.start_or_refuse("acme", lambda: Held(release), str)
    assert jobs.latest("acme", "job", a.job_id) is a and jobs.latest("acme", "job") is b
    release.set()
    assert a.wait(WAIT) and b.wait(WAIT)
    later = [jobs.start_or_refuse("acme", lambda: Held(release), str) for _ in range(2)]
    assert all(job.wait(WAIT) for job in later)
    assert jobs.get("acme", a.job_id) is None and jobs.get("acme", b.job_id) is b  # the oldest forgotten
    with pytest.raises(HTTPException) as missing:
        jobs.latest("globex", "bulk action")
    assert (missing.value.status_code, missing.value.detail) == (404, "no such bulk action")


def test_a_failed_audit_starts_nothing_and_a_failing_job_reports_its_error() -> None:
    jobs: Jobs[Held] = Jobs()
    release = threading.Event()
    made: list[Held] = []

    def audit(_: Held) -> None:
        raise OSError("database unavailable")

    def make(fail: bool = False) -> Held:
        made.append(Held(release, fail))
        return made[-1]

    with pytest.raises(OSError):
        jobs.start("dst-1", make, before_start=audit)
    assert jobs.get("dst-1") is None and not made[0].running
    failing, _ = jobs.start("dst-1", lambda: make(fail=True))
    release.set()
    assert failing.wait(WAIT)
    assert failing.error == "the broker went away" and failing.progress == ["started"]


class Stoppable(Job[list[str]]):
    """A job that works until asked to stop (a resync between two batches)."""

    def __init__(self) -> None:
        super().__init__("stoppable", [])

    def work(self, report: Callable[[list[str]], None], stop: threading.Event) -> list[str]:
        report(["started"])
        stop.wait(WAIT)
        return ["started", "stopped early" if stop.is_set() else "timed out"]


def test_stop_all_ends_the_running_jobs_and_names_those_that_do_not_end() -> None:
    """At shutdown every running job is asked to stop; one that does not end in time is returned."""
    jobs: Jobs[Job[list[str]]] = Jobs(running_at_most=3, keep=3)
    deaf = threading.Event()
    stoppable, _ = jobs.start("dst-1", Stoppable)
    stuck, _ = jobs.start("dst-1", lambda: Held(deaf))
    try:
        left = jobs.stop_all(time.monotonic() + 1.0)
        assert left == [stuck]
        assert not stoppable.running and stoppable.progress == ["started", "stopped early"]
    finally:
        deaf.set()
    assert stuck.wait(WAIT)
