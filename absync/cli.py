"""``absync`` command line. Each sub-command lives in ``absync/commands/<name>.py`` and exposes
``add_parser(subparsers)``; the parser it adds sets ``func(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

from streams.kafka_env import KafkaConfigError
from streams.logging import configure_logging
from streams.settings import get_settings

COMMANDS = [
    "broker",
    "topics",
    "publish",
    "run",
    "destinations",
    "tokens",
    "projection",
    "resync",
    "replay_failed",
    "erase",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="absync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        # A sub-command whose module fails to import stops the CLI with that error, never a
        # silently shorter list of commands.
        importlib.import_module(f"absync.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        settings = get_settings()
    except KafkaConfigError as exc:  # a KAFKA_* variable that is no connection property
        sys.stderr.write(f"absync: {exc}\n")
        return 78
    configure_logging(settings.log_level)
    args = build_parser().parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
