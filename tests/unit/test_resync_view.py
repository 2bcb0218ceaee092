"""What ``absync resync`` shows: the bar on a terminal, progress lines elsewhere, the summary."""

from __future__ import annotations

from io import StringIO

from rich.console import Console

from absync.commands.resync_view import BarView, LogView, duration, summary, view_for
from processors.resync import ResyncProgress


def progress(**values: object) -> ResyncProgress:
    state = ResyncProgress(phase="sending partition 2", total=10_000, seconds=4.0)
    for name, value in values.items():
        setattr(state, name, value)
    return state


def test_the_bar_shows_count_rate_time_left_and_what_was_sent_on_a_terminal() -> None:
    out = StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system=None)
    view = view_for(console, "dst")
    assert isinstance(view, BarView)
    with view:
        # 2,000 done in this run's 4 s (1,000 before a resume): 500/s, 7,000 left: 14 s.
        view.update(progress(done=3_000, done_before=1_000, sent=2_900, skipped=90, failed=10))
    text = out.getvalue()
    assert "sending partition 2" in text
    assert "3000/10000" in text
    assert "500/s" in text
    assert "0:14 left" in text
    assert "2,900 sent, 90 skipped, 10 failed" in text


def test_elsewhere_progress_goes_to_log_lines() -> None:
    console = Console(file=StringIO(), force_terminal=False)
    assert isinstance(view_for(console, "dst"), LogView)


def test_the_summary_gives_sent_skipped_failed_duration_and_rate() -> None:
    done = progress(
        done=10_000, sent=9_000, skipped=990, failed=10, upserts=8_000, deletes=1_000, completed=True
    )
    text = summary("dst", done)
    assert text.splitlines() == [
        "resync of dst complete: 8000 upsert(s), 1000 delete(s) sent",
        "  records  10,000 of 10,000 read",
        "  sent     9,000",
        "  skipped  990 (older states, erasures, outside the filters or the scope)",
        "  failed   10 (unreadable records: the fan-out dead-letters them)",
        "  duration 4.0 s",
        "  rate     2,250 sent/s, 2,500 records/s",
    ]
    stopped = summary("dst", progress(done=10, resumed=True))
    assert "interrupted (resumed from its checkpoint)" in stopped and "run the same command" in stopped
    assert "sent/s" not in stopped  # a resumed run's counts include its earlier part


def test_durations_read_as_clock_times() -> None:
    assert [duration(None), duration(14.4), duration(3725)] == ["-:--", "0:14", "1:02:05"]
