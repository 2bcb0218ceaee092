"""``absync topics create|list``."""

from __future__ import annotations

import argparse
import sys

from streams.settings import get_settings
from streams.topics import Topics, create_topics


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("topics", help="create or list absync's Kafka topics")
    parser.add_argument("action", choices=["create", "list"])
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.action == "create":
        created = create_topics(settings)
        sys.stdout.write(f"created {len(created)} topic(s): {', '.join(created) or '-'}\n")
    else:
        for spec in Topics(settings).specs():
            sys.stdout.write(f"{spec.name}\t{spec.partitions}p rf={spec.replication}\t{spec.doc}\n")
    return 0
