"""The Kafka ACLs of absync's principals, in one place: the local secured broker
(deploy/local/broker.sh) applies them, the Kubernetes KafkaUsers (deploy/kubernetes) carry them, and
tests/deploy checks that both agree.

The principals of a deployment (``ABSYNC_TOPIC_PREFIX`` = P, ``ABSYNC_GROUP_PREFIX`` = G):

- ``absync``, the service: its topics (prefixed P; every topic by name when P is empty), its
  consumer groups and transactional ids (prefixed ``G-P``); nothing else, so several deployments
  share one cluster, each seeing only its own topics;
- ``producer``, an upstream team: may only write ``Pabsences``;
- ``viewer``: may only read ``Pdelivery-status`` (with consumer groups prefixed ``Pviewer``);
- ``scaler`` (Kubernetes only: KEDA): may describe absync's topics and groups, to read the lag.

``python -m streams.acls apply ROLE=PRINCIPAL ...`` creates them with the client configuration of
the environment (``KAFKA_*``: an admin principal); ``python -m streams.acls show`` prints them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

from streams.settings import Settings
from streams.topics import Topics


@dataclass(frozen=True)
class Rule:
    """One resource pattern and the operations allowed on it (Strimzi's vocabulary)."""

    type: str
    """``topic``, ``group`` or ``transactionalId``."""
    name: str
    pattern: str
    """``literal`` or ``prefix``."""
    operations: tuple[str, ...]
    """Kafka operations: ``Read``, ``Write``, ``Describe``, ``Create``, ``AlterConfigs``."""


def service_rules(settings: Settings) -> list[Rule]:
    p, g = settings.topic_prefix, f"{settings.group_prefix}-{settings.topic_prefix}"
    # AlterConfigs: create_topics brings retention.ms of existing topics to ABSYNC_PAYLOAD_RETENTION.
    topic_ops = ("Read", "Write", "Describe", "Create", "AlterConfigs")
    if p:
        topics = [Rule("topic", p, "prefix", topic_ops)]
    else:
        topics = [Rule("topic", spec.name, "literal", topic_ops) for spec in Topics(settings).specs()]
    return [
        *topics,
        Rule("group", g, "prefix", ("Read", "Describe")),
        Rule("transactionalId", g, "prefix", ("Write", "Describe")),
    ]


def producer_rules(settings: Settings) -> list[Rule]:
    return [Rule("topic", Topics(settings).absences, "literal", ("Write", "Describe"))]


def viewer_rules(settings: Settings) -> list[Rule]:
    return [
        Rule("topic", Topics(settings).status, "literal", ("Read", "Describe")),
        Rule("group", f"{settings.topic_prefix}viewer", "prefix", ("Read",)),
    ]


def scaler_rules(settings: Settings) -> list[Rule]:
    """An autoscaler reading the lag of absync's groups (KEDA): describe only, no record."""
    p, g = settings.topic_prefix, f"{settings.group_prefix}-{settings.topic_prefix}"
    if p:
        topics = [Rule("topic", p, "prefix", ("Describe",))]
    else:
        topics = [Rule("topic", spec.name, "literal", ("Describe",)) for spec in Topics(settings).specs()]
    return [*topics, Rule("group", g, "prefix", ("Describe",))]


ROLES: dict[str, Callable[[Settings], list[Rule]]] = {
    "absync": service_rules,
    "producer": producer_rules,
    "viewer": viewer_rules,
    "scaler": scaler_rules,
}


def apply(settings: Settings, principals: dict[str, str], timeout: float = 30.0) -> int:
    """Creates the ACLs of each role for its principal (``User:NAME``); returns how many bindings.
    Creating a binding that exists already is a no-op (Kafka's semantics)."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    from streams.kafka import make_admin

    types = {
        "topic": ResourceType.TOPIC,
        "group": ResourceType.GROUP,
        "transactionalId": ResourceType.TRANSACTIONAL_ID,
    }
    patterns = {"literal": ResourcePatternType.LITERAL, "prefix": ResourcePatternType.PREFIXED}
    bindings = [
        AclBinding(
            types[rule.type],
            rule.name,
            patterns[rule.pattern],
            principal,
            "*",
            AclOperation[re.sub(r"(?<=[a-z])(?=[A-Z])", "_", rule_op).upper()],  # AlterConfigs: ALTER_CONFIGS
            AclPermissionType.ALLOW,
        )
        for role, principal in principals.items()
        for rule in ROLES[role](settings)
        for rule_op in rule.operations
    ]
    admin = make_admin(settings)
    for future in admin.create_acls(bindings, request_timeout=timeout).values():
        future.result()
    return len(bindings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.acls", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    applying = sub.add_parser("apply", help="create the ACLs (ROLE=User:NAME ...)")
    applying.add_argument("principals", nargs="+", metavar="ROLE=PRINCIPAL")
    sub.add_parser("show", help="print the rules of every role as JSON")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "show":
        json.dump(
            {role: [asdict(r) for r in rules(settings)] for role, rules in ROLES.items()},
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
        return 0
    principals = dict(item.split("=", 1) for item in args.principals)
    unknown = set(principals) - set(ROLES)
    if unknown:
        parser.error(f"unknown role(s) {sorted(unknown)}; known: {sorted(ROLES)}")
    count = apply(settings, principals)
    sys.stderr.write(f"streams.acls: {count} ACL bindings in place for {sorted(principals)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
