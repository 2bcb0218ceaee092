"""``absync broker start|stop|status``: the local Kafka broker (deploy/local/broker.sh)."""

from __future__ import annotations

import argparse
import sys

from streams import broker


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("broker", help="fetch, start, stop the local Kafka broker (KRaft, no Docker)")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument(
        "--port", type=int, default=None, help="broker port (default ABSYNC_BROKER_PORT or 9092)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "start":
            sys.stdout.write(broker.start(args.port) + "\n")
        elif args.action == "stop":
            broker.stop(args.port)
        else:
            running = broker.status(args.port)
            sys.stdout.write("running\n" if running else "not running\n")
            return 0 if running else 1
    except broker.BrokerError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    return 0
