"""What ``absync resync`` shows while it runs, and its summary at the end.

On a terminal (stderr, where the progress goes: stdout keeps the summary, so ``absync resync ... >
result.txt`` still shows the bar): a rich progress bar with the phase, records done / total, the rate
and the time left, and what was sent. Elsewhere (a pipe, a file, a CI log): one structlog
``resync progress`` line per :data:`LOG_INTERVAL` seconds and at each phase change, with the same
figures. Both read them from :class:`processors.resync.ResyncProgress` (the API's job shows the same).
"""

from __future__ import annotations

import time
from types import TracebackType

import structlog
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from processors.resync import ResyncProgress

log = structlog.get_logger("absync.resync")

LOG_INTERVAL = 5.0
"""Seconds between two progress lines when the output is not a terminal."""


def duration(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03``; ``-:--`` when unknown."""
    if seconds is None:
        return "-:--"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class _StateColumn(ProgressColumn):
    """A figure of the :class:`ResyncProgress` kept in the task's fields (rich's own speed and
    time-left columns sample the last 30 s, and speak of bytes)."""

    def __init__(self, render: str) -> None:
        super().__init__()
        self._render = render

    def render(self, task: Task) -> Text:
        state: ResyncProgress | None = task.fields.get("state")
        if state is None:
            return Text("")
        if self._render == "rate":
            return Text(f"{state.rate:,.0f}/s")
        if self._render == "left":
            return Text(f"{duration(state.seconds_left)} left")
        return Text(f"{state.sent:,} sent, {state.skipped:,} skipped, {state.failed:,} failed")


class BarView:
    """The progress bar on a terminal (a context manager)."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _StateColumn("rate"),
            _StateColumn("left"),
            _StateColumn("counts"),
            console=console,
        )
        self._task = self._progress.add_task("starting", total=None, state=None)

    def update(self, state: ResyncProgress) -> None:
        self._progress.update(
            self._task, description=state.phase, completed=state.done, total=state.total or None, state=state
        )

    def __enter__(self) -> BarView:
        self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()


class LogView:
    """Progress as structlog lines (not a terminal)."""

    def __init__(self, destination_id: str, interval: float = LOG_INTERVAL) -> None:
        self._destination_id = destination_id
        self._interval = interval
        self._last: float | None = None
        self._phase = ""

    def update(self, state: ResyncProgress) -> None:
        now = time.monotonic()
        if state.phase == self._phase and self._last is not None and now - self._last < self._interval:
            return
        self._last, self._phase = now, state.phase
        left = state.seconds_left
        log.info(
            "resync progress",
            destination=self._destination_id,
            phase=state.phase,
            done=state.done,
            total=state.total,
            sent=state.sent,
            skipped=state.skipped,
            failed=state.failed,
            rate=round(state.rate, 1),
            seconds_left=None if left is None else round(left),
        )

    def __enter__(self) -> LogView:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


def view_for(console: Console, destination_id: str) -> BarView | LogView:
    """The bar when ``console`` writes to a terminal, else progress lines."""
    return BarView(console) if console.is_terminal else LogView(destination_id)


def summary(destination_id: str, result: ResyncProgress) -> str:
    """What the command prints at the end (complete or interrupted), one figure per line."""
    resumed = " (resumed from its checkpoint)" if result.resumed else ""
    counts = f"{result.upserts} upsert(s), {result.deletes} delete(s)"
    if result.completed:
        head = f"resync of {destination_id} complete{resumed}: {counts} sent"
    else:
        head = (
            f"resync of {destination_id} interrupted{resumed}: {counts} so far; "
            "run the same command to continue"
        )
    rate = f"{result.rate:,.0f} records/s"
    if not result.resumed and result.seconds > 0:  # a resumed run's counts include its earlier part
        rate = f"{result.sent / result.seconds:,.0f} sent/s, {rate}"
    lines = [
        head,
        f"  records  {result.done:,} of {result.total:,} read",
        f"  sent     {result.sent:,}",
        f"  skipped  {result.skipped:,} (older states, erasures, outside the filters or the scope)",
        f"  failed   {result.failed:,} (unreadable records: the fan-out dead-letters them)",
        f"  duration {result.seconds:.1f} s" + (" (this run)" if result.resumed else ""),
        f"  rate     {rate}",
    ]
    return "\n".join(lines) + "\n"
