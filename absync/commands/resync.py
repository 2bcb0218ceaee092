"""``absync resync --destination D [--ending-on-or-after DATE] [--entity E] [--department D]
[--changed-since TIME] [--rate N]``: replays ``absences`` to bring one destination to what it should
hold now (see :mod:`processors.resync`).

``--ending-on-or-after`` is the product's back-fill from a date: every absence ending on or after it
(the absence's own date). ``--changed-since`` is the time a change was written to Kafka (an operator's
catch-up tool). ``--since`` is the deprecated old name of ``--changed-since``: it still works, and says
so on stderr.

Shows its progress on stderr (:mod:`absync.commands.resync_view`: a bar with records done / total,
rate and time left on a terminal, structlog lines otherwise) and prints a summary on stdout (sent,
skipped, failed, duration, rate). Ctrl-C stops it cleanly: the position is checkpointed and the same
command continues from it. Exit code 0 when complete, 1 when the
destination cannot be resynced, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import signal
import sys
import threading
from types import FrameType

from rich.console import Console

from absync.commands.resync_view import summary, view_for
from processors.resync import DEFAULT_RATE, ResyncError, ResyncRequest, run_resync
from processors.resync_filter import AbsenceScope
from streams.settings import get_settings


def parse_since(text: str) -> dt.datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO 8601 timestamp (UTC when it has no offset)."""
    try:
        value = dt.datetime.fromisoformat(text)
        value = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        utc = value.astimezone(dt.UTC)  # OverflowError past year 9999 in UTC
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text[:40]!r} (use YYYY-MM-DD or ISO 8601)") from None
    except OverflowError:
        utc = None
    if utc is None or utc.year < 1970:  # Kafka's record times start in 1970 (the broker refuses less)
        raise argparse.ArgumentTypeError(f"not a time Kafka knows: {text[:40]!r} (1970 to 9999, UTC)")
    return value


def parse_date(text: str) -> dt.date:
    """``YYYY-MM-DD``: a calendar day (an absence's date has no time of day)."""
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError(text)
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD)") from None


SINCE_DEPRECATED = (
    "absync resync: --since is deprecated: it filters on the time the change was written to Kafka; "
    "use --changed-since for that, or --ending-on-or-after DATE for every absence ending on or after a date\n"
)


def positive_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = 0.0
    if rate <= 0:
        raise argparse.ArgumentTypeError(f"not a positive rate: {text!r}")
    return rate


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("resync", help="send one destination what it should hold now (replay)")
    parser.add_argument("--destination", required=True, help="destination id")
    parser.add_argument(
        "--ending-on-or-after",
        type=parse_date,
        metavar="DATE",
        help="every absence ending on or after this date, YYYY-MM-DD (the absence's own date)",
    )
    parser.add_argument(
        "--entity", "--legal-entity", dest="entity", help="only absences of this legal entity id"
    )
    parser.add_argument("--department", help="only absences of employees of this department id")
    parser.add_argument(
        "--changed-since",
        type=parse_since,
        metavar="TIME",
        help="only absences whose latest change was written to Kafka at or after this time (default: all)",
    )
    parser.add_argument(
        "--since", type=parse_since, dest="since", help="deprecated: the old name of --changed-since"
    )
    parser.add_argument(
        "--rate",
        type=positive_rate,
        default=DEFAULT_RATE,
        help=f"absences sent per second (default {DEFAULT_RATE:g})",
    )
    parser.set_defaults(func=run)


def stop_on_signals(stop: threading.Event) -> None:
    """SIGINT/SIGTERM stop the resync at the next record (a checkpoint is written)."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def run(args: argparse.Namespace) -> int:
    changed_since = args.changed_since
    if args.since is not None:
        sys.stderr.write(SINCE_DEPRECATED)
        if changed_since is not None and changed_since != args.since:
            sys.stderr.write("absync resync: --since and --changed-since disagree: give one\n")
            return 2
        changed_since = args.since
    scope = AbsenceScope(args.ending_on_or_after, args.entity, args.department)
    request = ResyncRequest(args.destination, changed_since=changed_since, scope=scope, rate=args.rate)
    stop = threading.Event()
    stop_on_signals(stop)
    console = Console(stderr=True)
    with view_for(console, args.destination) as view:
        try:
            result = run_resync(get_settings(), request, stop=stop, progress=view.update)
        except ResyncError as exc:
            console.print(f"resync not possible: {exc}")
            return 1
    sys.stdout.write(summary(args.destination, result))
    return 0 if result.completed else 130
