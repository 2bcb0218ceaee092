"""``absync destinations apply FILE.yaml | list | disable ID | delete ID``.

Writes go through :class:`absync.services.destinations.DestinationService`, as the API's do: the
command reads the destinations topic first (the table), so ``apply`` keeps the encrypted secrets of
an existing destination that the YAML leaves out (secrets are write-only) and bumps its revision;
a write that changes nothing (``apply`` of an unchanged destination without secrets, ``disable`` of
a disabled one) publishes nothing. Every published write appends an audit record to the projection
database (``ABSYNC_DATABASE_URL``, the one the API reads ``/destinations/{id}/audit`` from) with the
actor :func:`cli_actor`; the database is reached (and migrated) before anything is written, so a
write the CLI publishes is audited. ``list`` shows the names of secrets, never their values.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import connectors.registry  # noqa: F401 - installs the kind catalog the validation below reads
from absync.services.destinations import DestinationNotFound, DestinationService
from processors.resync import ResyncError, catch_up_request, enabled_again, run_resync
from projections.db import engine_for, migrate
from schemas.destination import Destination
from streams.destinations import DestinationError, DestinationTable, load_yaml
from streams.secrets import SecretBox
from streams.settings import InsecureSettings, Settings, get_settings, require_production_ready

CLI_ACTOR_PREFIX = "cli:"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("destinations", help="manage destinations (the destinations topic)")
    actions = parser.add_subparsers(dest="action", required=True)
    apply = actions.add_parser("apply", help="create or update the destinations of a YAML file")
    apply.add_argument("file", type=Path)
    apply.set_defaults(func=run_apply)
    actions.add_parser("list", help="list destinations (secret names only)").set_defaults(func=run_list)
    for name, func, text in (
        ("disable", run_disable, "disable"),
        ("delete", run_delete, "delete (tombstone)"),
    ):
        action = actions.add_parser(name, help=f"{text} one destination")
        action.add_argument("id")
        action.set_defaults(func=func)


def cli_actor() -> str:
    """Who a CLI write is audited as (and the destination's ``updated_by``): ``cli:`` and the OS
    user running the command, as :func:`getpass.getuser` names it (``LOGNAME``, ``USER``, ``LNAME``,
    ``USERNAME``, then the password database), else ``cli:uid-<uid>``. It is a statement, not an
    authentication: whoever runs the CLI holds the service's Kafka and database credentials."""
    try:
        return f"{CLI_ACTOR_PREFIX}{getpass.getuser()}"
    except (OSError, KeyError):
        return f"{CLI_ACTOR_PREFIX}uid-{os.getuid()}"


def _table(settings: Settings) -> DestinationTable:
    table = DestinationTable(settings).start()
    try:
        table.wait_ready(30)
    finally:
        table.close()
    return table


@contextmanager
def _writes(settings: Settings) -> Iterator[DestinationService]:
    """The write service over a table kept up to date while the command runs (so each write is read
    back) and the audit database (migrated first: unreachable, the command stops before writing)."""
    engine = engine_for(settings)
    migrate(engine)
    table = DestinationTable(settings).start()
    try:
        table.wait_ready(30)
        yield DestinationService(settings, table, engine)
    finally:
        table.close()
        engine.dispose()


def run_apply(args: argparse.Namespace) -> int:
    settings = get_settings()
    try:
        require_production_ready(settings)  # secrets encrypted with a public key are in clear
    except InsecureSettings as exc:
        sys.stderr.write(f"absync destinations apply: {exc}\n")
        return 2
    try:
        loaded = load_yaml(args.file, SecretBox.from_settings(settings))
    except (OSError, DestinationError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    with _writes(settings) as writes:
        try:  # every document checked (and merged) before any is written
            written = writes.apply(loaded, actor=cli_actor())
        except DestinationError as exc:
            sys.stderr.write(f"{args.file}: {exc}\n")
            return 1
    for outcome in written:
        destination = outcome.destination
        verb = "created" if outcome.previous is None else "updated" if outcome.published else "unchanged"
        sys.stdout.write(
            f"{verb} {destination.id} (tenant {destination.tenant}, revision {destination.revision})\n"
        )
    for outcome in written:
        if outcome.previous is not None and enabled_again(outcome.previous, outcome.destination):
            _catch_up(settings, outcome.previous)
    return 0


def _catch_up(settings: Settings, previous: Destination) -> None:
    """Enabled again by this apply: the resync of what changed while it was disabled (as the API
    does); interrupted or refused, it says how to run it by hand."""
    request = catch_up_request(previous)
    since = f" --changed-since {request.changed_since.isoformat()}" if request.changed_since else ""
    try:
        result = run_resync(settings, request)
    except ResyncError as exc:
        sys.stderr.write(
            f"{previous.id} enabled again, its catch-up resync failed ({exc}): run "
            f"`absync resync --destination {previous.id}{since}`\n"
        )
        return
    sys.stdout.write(
        f"{previous.id} enabled again: catch-up resync of the changes since it was disabled, "
        f"{result.upserts} upsert(s), {result.deletes} delete(s)\n"
    )


def run_list(args: argparse.Namespace) -> int:
    for d in sorted(_table(get_settings()).all(), key=lambda d: (d.tenant, d.id)):
        filters = ", ".join(f"{k}={','.join(v)}" for k, v in d.filters.to_avro().items() if v) or "all"
        sys.stdout.write(
            f"{d.id}\ttenant={d.tenant}\tkind={d.kind}\t{'enabled' if d.enabled else 'disabled'}\t"
            f"changes={d.changes.value.lower()}\t"
            f"rate_limit={f'{d.rate_limit:g}/s' if d.rate_limit is not None else 'none'}\tfilters: {filters}\t"
            f"secrets: {','.join(sorted(d.secrets)) or '-'}\trevision={d.revision}\tname={d.name}\n"
        )
    return 0


def run_disable(args: argparse.Namespace) -> int:
    with _writes(get_settings()) as writes:
        try:
            writes.set_enabled(args.id, False, actor=cli_actor())
        except DestinationNotFound:
            sys.stderr.write(f"no destination {args.id!r}\n")
            return 1
    sys.stdout.write(f"disabled {args.id}\n")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    with _writes(get_settings()) as writes:
        try:
            writes.delete(args.id, actor=cli_actor())
        except DestinationNotFound:
            sys.stderr.write(f"no destination {args.id!r}\n")
            return 1
    sys.stdout.write(f"deleted {args.id}\n")
    return 0
