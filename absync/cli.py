"""``absync`` command line. Each sub-command lives in ``absync/commands/<module>.py`` and exposes
``add_parser(subparsers)``; the parser it adds sets ``func(args) -> int``.

Only the chosen sub-command's module is imported (a start costs that command's imports, not those of
FastAPI, SQLAlchemy and every connector); the others are listed from :data:`COMMANDS`. Guarantees:
the chosen sub-command's module failing to import stops the CLI with that error; ``absync --help``
stops with the error of a sub-command module that is missing, never a silently shorter list
(tests/test_fail_loudly.py); each module registers the name and help :data:`COMMANDS` lists for it
(tests/unit/test_cli.py).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from types import ModuleType

from streams.kafka_env import KafkaConfigError
from streams.logging import configure_logging
from streams.settings import get_settings

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module under absync.commands, its help line in `absync --help`)
    "broker": ("broker", "fetch, start, stop the local Kafka broker (KRaft, no Docker)"),
    "topics": ("topics", "create or list absync's Kafka topics"),
    "publish": ("publish", "publish absence events from a JSON-lines file"),
    "run": ("run", "run the service in the foreground (Ctrl-C stops it)"),
    "destinations": ("destinations", "manage destinations (the destinations topic)"),
    "tokens": ("tokens", "create, list or revoke API tokens"),
    "projection": ("projection", "rebuild the operator view from Kafka, or show its lag"),
    "resync": ("resync", "send one destination what it should hold now (replay)"),
    "replay-failed": ("replay_failed", "re-send one destination's deliveries in Error"),
    "erase": ("erase", "erase one employee's personal data (view and topics)"),
}


def command_module(name: str) -> ModuleType:
    """Imports the module of sub-command ``name``; its import error propagates."""
    return importlib.import_module(f"absync.commands.{COMMANDS[name][0]}")


def _require_modules() -> None:
    """Raises ModuleNotFoundError for a listed sub-command whose module cannot be found (without
    importing any of them)."""
    for module, _ in COMMANDS.values():
        qualified = f"absync.commands.{module}"
        if importlib.util.find_spec(qualified) is None:
            raise ModuleNotFoundError(f"No module named {qualified!r}", name=qualified)


def chosen_command(argv: list[str]) -> str | None:
    """The sub-command ``argv`` names: its first argument not starting with ``-`` (the top-level
    parser has no option taking a value), if it is one of :data:`COMMANDS`."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with ``command``'s full sub-parser (its module imported) and a listing-only
    entry for every other sub-command; ``command=None`` lists them all, after checking that each
    module exists."""
    parser = argparse.ArgumentParser(prog="absync", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    if command is None:
        _require_modules()
    for name, (_, help_line) in COMMANDS.items():
        if name == command:
            command_module(name).add_parser(sub)
        else:
            sub.add_parser(name, help=help_line)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        settings = get_settings()
    except KafkaConfigError as exc:  # a KAFKA_* variable that is no connection property
        sys.stderr.write(f"absync: {exc}\n")
        return 78
    configure_logging(settings.log_level)
    arguments = sys.argv[1:] if argv is None else argv
    args = build_parser(chosen_command(arguments)).parse_args(arguments)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
