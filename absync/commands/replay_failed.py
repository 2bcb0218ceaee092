"""``absync replay-failed --destination D --since DATE [--rate N]``: re-sends the deliveries of one
destination that are in Error (failed and never later succeeded) since DATE.

They are read from the projection (status ERROR, ``updated_at >= since``) and re-sent as RETRY
commands: the worker makes one attempt now of each key's latest state (see
:mod:`processors.replay_failed` for why not a record in the first retry topic).
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
from collections.abc import Iterator

import sqlalchemy as sa

from absync.commands.resync import parse_since, positive_rate
from processors.replay_failed import FailedDelivery, replay_failed
from processors.resync_io import DEFAULT_RATE
from projections import queries
from projections.db import engine_for
from schemas.delivery import Status
from streams.settings import Settings, get_settings


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("replay-failed", help="re-send one destination's deliveries in Error")
    parser.add_argument("--destination", required=True, help="destination id")
    parser.add_argument("--since", type=parse_since, required=True, help="in Error since (YYYY-MM-DD)")
    parser.add_argument(
        "--rate", type=positive_rate, default=DEFAULT_RATE, help=f"commands/s (default {DEFAULT_RATE:g})"
    )
    parser.set_defaults(func=run)


def failed_since(settings: Settings, destination_id: str, since: dt.datetime) -> Iterator[FailedDelivery]:
    """The destination's deliveries in Error whose status changed at or after ``since``, newest
    first (the view's keyset order: pages stop at the first older row)."""
    engine = engine_for(settings)
    try:
        cursor: str | None = None
        while True:
            page = queries.list_deliveries(
                engine,
                tenant=None,
                status=Status.ERROR.value,
                destination_id=destination_id,
                cursor=cursor,
                limit=queries.MAX_LIMIT,
            )
            for row in page.items:
                if row.updated_at < since:
                    return
                yield FailedDelivery(row.delivery_id, row.destination_id, row.absence_id, row.tenant)
            if page.next_cursor is None:
                return
            cursor = page.next_cursor
    finally:
        engine.dispose()


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    try:
        failed = list(failed_since(settings, args.destination, args.since))
    except sa.exc.SQLAlchemyError as exc:
        sys.stderr.write(f"cannot read the deliveries view ({settings.sqlalchemy_url}): {exc}\n")
        return 1
    sent = replay_failed(settings, failed, issued_by=f"cli:{getpass.getuser()}", rate=args.rate)
    sys.stdout.write(
        f"{sent} delivery(ies) of {args.destination} in Error since {args.since.isoformat()} re-sent\n"
    )
    return 0
