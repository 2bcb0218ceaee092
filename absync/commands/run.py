"""``absync run [--only NAME ...]``: every processor, the projection and the HTTP server."""

from __future__ import annotations

import argparse
import asyncio
import sys

from absync.service import COMPONENTS, run_components
from streams.settings import InsecureSettings, get_settings, require_production_ready
from streams.topics import create_topics


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("run", help="run the service in the foreground (Ctrl-C stops it)")
    parser.add_argument(
        "--only", action="append", choices=list(COMPONENTS), help="run only this part (repeatable)"
    )
    parser.add_argument("--no-create-topics", action="store_true", help="do not create missing topics first")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    try:
        require_production_ready(settings)
    except InsecureSettings as exc:
        sys.stderr.write(f"absync run: {exc}\n")
        return 2
    if not args.no_create_topics:
        create_topics(settings)
    asyncio.run(run_components(settings, args.only))
    return 0
