"""``absync tokens create|list|revoke``: the API tokens of the operator API and console.

``create`` prints the token once, alone on the last line (scripts take ``| tail -1``); only its hash
is stored, so a lost token is revoked and replaced, never recovered. ``--expires-in 90d`` makes a
token that the API refuses after 90 days (like a revoked one); ``list`` shows when each expires.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from absync.web.auth import Right, create_token, list_tokens, revoke_token
from projections.db import engine_for, migrate
from streams.settings import get_settings, parse_duration


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("tokens", help="create, list or revoke API tokens")
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a token (printed once, on the last line)")
    create.add_argument("--name", required=True, help="who or what uses it (recorded as the actor)")
    create.add_argument("--right", required=True, choices=[r.value for r in Right])
    create.add_argument("--tenant", help="limit the token to this tenant's deliveries and destinations")
    create.add_argument(
        "--expires-in", type=_lifetime, help="refuse the token after this long (e.g. 90d, 12h); default never"
    )
    actions.add_parser("list", help="list tokens (never the token itself)")
    revoke = actions.add_parser("revoke", help="revoke a token by id (effective at once)")
    revoke.add_argument("id")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    engine = engine_for(get_settings())
    migrate(engine)
    out = sys.stdout
    if args.action == "create":
        expires_at = dt.datetime.now(dt.UTC) + args.expires_in if args.expires_in else None
        token = create_token(engine, args.name, Right(args.right), args.tenant, expires_at=expires_at)
        scope = f"tenant {args.tenant}" if args.tenant else "all tenants"
        until = f", expires {expires_at.isoformat(timespec='seconds')}" if expires_at else ""
        out.write(f"token {args.name!r} ({args.right}, {scope}{until}); it is shown once, store it now:\n")
        out.write(token + "\n")
        return 0
    if args.action == "list":
        out.write("id\tname\tright\ttenant\tcreated_at\trevoked_at\texpires_at\n")
        now = dt.datetime.now(dt.UTC)
        for info in list_tokens(engine):
            revoked = info.revoked_at.isoformat() if info.revoked_at else "-"
            expires = "-"
            if info.expires_at:
                expires = info.expires_at.isoformat() + (" (expired)" if info.expires_at <= now else "")
            out.write(
                f"{info.id}\t{info.name}\t{info.right.value}\t{info.tenant or '*'}\t"
                f"{info.created_at.isoformat()}\t{revoked}\t{expires}\n"
            )
        return 0
    if revoke_token(engine, args.id):
        out.write(f"revoked {args.id}\n")
        return 0
    sys.stderr.write(f"no active token with id {args.id}\n")
    return 1


def _lifetime(text: str) -> dt.timedelta:
    """``90d`` -> 90 days (the units of ABSYNC_* durations: ms, s, m, h, d); positive, at most 10 years."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 < seconds <= 10 * 366 * 86400:
        raise argparse.ArgumentTypeError(f"--expires-in must be positive and at most 10 years, got {text!r}")
    return dt.timedelta(seconds=seconds)
