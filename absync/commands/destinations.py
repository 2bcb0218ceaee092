"""``absync destinations apply FILE.yaml | list | disable ID | delete ID``.

Every command reads the destinations topic first (the table), so ``apply`` keeps the encrypted secrets
of an existing destination that the YAML leaves out (secrets are write-only) and bumps its revision.
``list`` shows the names of secrets, never their values.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
from pathlib import Path

import connectors.registry  # noqa: F401 - installs the kind catalog the validation below reads
from schemas.destination import Destination
from streams.destinations import (
    DestinationError,
    DestinationTable,
    delete_destination,
    load_yaml,
    merge_secrets,
    publish_destination,
)
from streams.secrets import SecretBox
from streams.settings import InsecureSettings, Settings, get_settings, require_production_ready


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


def _table(settings: Settings) -> DestinationTable:
    table = DestinationTable(settings).start()
    try:
        table.wait_ready(30)
    finally:
        table.close()
    return table


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
    table = _table(settings)
    merged: list[tuple[Destination, Destination | None]] = []
    for destination in loaded:  # every document checked before any is written
        previous = table.get(destination.id)
        if previous is not None:
            try:
                secrets = merge_secrets(previous, destination.kind, destination.settings, destination.secrets)
            except DestinationError as exc:
                sys.stderr.write(f"{args.file}: destination {destination.id}: {exc}\n")
                return 1
            destination = dataclasses.replace(destination, secrets=secrets, revision=previous.revision + 1)
        merged.append((destination, previous))
    for destination, previous in merged:
        publish_destination(settings, destination)
        verb = "updated" if previous else "created"
        sys.stdout.write(
            f"{verb} {destination.id} (tenant {destination.tenant}, revision {destination.revision})\n"
        )
    return 0


def run_list(args: argparse.Namespace) -> int:
    for d in sorted(_table(get_settings()).all(), key=lambda d: (d.tenant, d.id)):
        filters = ", ".join(f"{k}={','.join(v)}" for k, v in d.filters.to_avro().items() if v) or "all"
        sys.stdout.write(
            f"{d.id}\ttenant={d.tenant}\tkind={d.kind}\t{'enabled' if d.enabled else 'disabled'}\t"
            f"changes={d.changes.value.lower()}\tfilters: {filters}\t"
            f"secrets: {','.join(sorted(d.secrets)) or '-'}\trevision={d.revision}\tname={d.name}\n"
        )
    return 0


def _existing(settings: Settings, destination_id: str) -> Destination | None:
    destination = _table(settings).get(destination_id)
    if destination is None:
        sys.stderr.write(f"no destination {destination_id!r}\n")
    return destination


def run_disable(args: argparse.Namespace) -> int:
    settings = get_settings()
    destination = _existing(settings, args.id)
    if destination is None:
        return 1
    publish_destination(
        settings,
        dataclasses.replace(
            destination, enabled=False, revision=destination.revision + 1, updated_at=dt.datetime.now(dt.UTC)
        ),
    )
    sys.stdout.write(f"disabled {args.id}\n")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    settings = get_settings()
    if _existing(settings, args.id) is None:
        return 1
    delete_destination(settings, args.id)
    sys.stdout.write(f"deleted {args.id}\n")
    return 0
