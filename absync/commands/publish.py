"""``absync publish FILE.jsonl``: one JSON absence event per line to the ``absences`` topic.

A bad line (not JSON, a missing or wrong field, a rule broken) is reported on stderr with its line
number and reason; every good line, before and after it, is still published. Blank lines are skipped.
Exit code 0 when every line was published, 1 if any line was bad, 2 if Kafka did not acknowledge.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from schemas.errors import ValidationError
from schemas.models import AbsenceEvent
from streams.publisher import AbsencePublisher, PublishError
from streams.settings import get_settings


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("publish", help="publish absence events from a JSON-lines file")
    parser.add_argument("file", type=Path, help="one JSON AbsenceEvent per line")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path: Path = args.file
    published = bad = 0
    try:
        with path.open("rb") as lines, AbsencePublisher(get_settings()) as publisher:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    publisher.publish(AbsenceEvent.from_json(json.loads(line.decode("utf-8"))))
                    published += 1
                except (UnicodeDecodeError, json.JSONDecodeError, ValidationError) as exc:
                    bad += 1
                    sys.stderr.write(f"{path}:{number}: {_reason(exc)}\n")
    except OSError as exc:
        sys.stderr.write(f"{path}: {exc.strerror or exc}\n")
        return 1
    except PublishError as exc:
        sys.stderr.write(f"not published: {exc}\n")
        return 2
    sys.stdout.write(f"published {published} event(s) from {path}; {bad} bad line(s)\n")
    return 1 if bad else 0


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8: byte {exc.start + 1} of the line"
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON: {exc.msg} at column {exc.colno}"
    return str(exc)
