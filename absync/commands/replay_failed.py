"""``absync replay-failed --destination D --since DATE [--rate N]``: re-sends the deliveries of one
destination that are in Error (failed and never later succeeded) since DATE.

The same operation as the console's and the API's Recover (:mod:`absync.services.recover`, where
its guarantees are stated), run in the foreground: one RETRY command per delivery in Error (one
per absence, at most :data:`absync.services.recover.MAX_DELIVERIES`), read from the projection.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys

import sqlalchemy as sa

from absync.commands.resync import parse_since, positive_rate
from absync.services import recover as recovery
from absync.services.recover import SKIP_REASONS, recover
from processors.replay_failed import FailedDelivery
from processors.resync_io import DEFAULT_RATE
from projections import queries
from projections.db import engine_for
from streams.settings import Settings, get_settings


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("replay-failed", help="re-send one destination's deliveries in Error")
    parser.add_argument("--destination", required=True, help="destination id")
    parser.add_argument("--since", type=parse_since, required=True, help="in Error since (YYYY-MM-DD)")
    parser.add_argument(
        "--rate", type=positive_rate, default=DEFAULT_RATE, help=f"commands/s (default {DEFAULT_RATE:g})"
    )
    parser.set_defaults(func=run)


def failed_since(settings: Settings, destination_id: str, since: dt.datetime) -> list[FailedDelivery]:
    """The destination's deliveries in Error since ``since``, newest first, read from the
    projection of ``settings`` (see :func:`absync.services.recover.failed_since`)."""
    engine = engine_for(settings)
    try:
        return list(recovery.failed_since(engine, destination_id, since))
    finally:
        engine.dispose()


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    engine = engine_for(settings)
    actor = f"cli:{getpass.getuser()}"
    try:
        destination = queries.get_destination(engine, args.destination, None)
        if destination is not None:
            recovery.audit(
                engine,
                destination_id=args.destination,
                tenant=destination.tenant,
                actor=actor,
                since=args.since,
            )
        result = recover(
            settings,
            engine,
            args.destination,
            args.since,
            issued_by=f"cli:{getpass.getuser()}",
            rate=args.rate,
        )
    except sa.exc.SQLAlchemyError as exc:
        sys.stderr.write(f"cannot read the deliveries view ({settings.sqlalchemy_url}): {exc}\n")
        return 1
    finally:
        engine.dispose()
    sys.stdout.write(
        f"{result.sent} delivery(ies) of {args.destination} in Error since {args.since.isoformat()} re-sent\n"
    )
    for reason, count in sorted(result.skipped.items()):
        sys.stdout.write(f"{count} skipped: {SKIP_REASONS[reason]}\n")
    return 0
