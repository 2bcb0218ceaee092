"""``absync run [--only NAME ...]``: every processor, the projection and the HTTP server."""

from __future__ import annotations

import argparse
import asyncio
import sys

import structlog

from absync.service import COMPONENTS, load_factory, run_components
from streams.kafka import KafkaAccessError, check_access, group_id
from streams.kafka_env import KafkaConfigError
from streams.settings import InsecureSettings, get_settings, require_production_ready
from streams.topics import Topics, create_topics

log = structlog.get_logger(__name__)

EXIT_KAFKA_ACCESS = 78
"""EX_CONFIG: Kafka refused the TLS handshake, the credentials or the ACLs (not worth a restart loop)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("run", help="run the service in the foreground (Ctrl-C stops it)")
    parser.add_argument(
        "--only", action="append", choices=list(COMPONENTS), help="run only this part (repeatable)"
    )
    parser.add_argument("--no-create-topics", action="store_true", help="do not create missing topics first")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N worker processes (fan-out and delivery in each)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.workers < 1:
        sys.stderr.write("absync run: --workers must be at least 1\n")
        return 2
    for name in args.only or COMPONENTS:
        load_factory(name)  # a part that cannot be imported stops start-up before any connection
    try:
        require_production_ready(settings)
    except InsecureSettings as exc:
        sys.stderr.write(f"absync run: {exc}\n")
        return 2
    try:  # a wrong password, an unknown CA or a missing ACL ends start-up here, within seconds
        check_access(
            settings,
            topics=[spec.name for spec in Topics(settings).specs()],
            groups=[group_id(settings, name) for name in args.only or COMPONENTS if name != "http"],
            wait=True,  # a broker that does not answer yet (restarting) is waited for, with warnings
        )
    except (KafkaAccessError, KafkaConfigError) as exc:
        log.error("kafka access refused at start-up", reason=str(exc))
        sys.stderr.write(f"absync: cannot start: {exc}\n")
        return EXIT_KAFKA_ACCESS
    if not args.no_create_topics:
        create_topics(settings)
    if args.workers > 1:
        from absync.workers import run_workers

        return run_workers(args.only or list(COMPONENTS), args.workers)
    asyncio.run(run_components(settings, args.only))
    return 0
