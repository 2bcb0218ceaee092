"""librdkafka connection properties from the environment, the way Confluent's container images take
them: ``KAFKA_<PROPERTY>``, the property's dots as underscores, upper case.

::

    KAFKA_SECURITY_PROTOCOL=SASL_SSL          -> security.protocol=SASL_SSL
    KAFKA_SASL_MECHANISM=SCRAM-SHA-512        -> sasl.mechanism=SCRAM-SHA-512
    KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD -> sasl.username / sasl.password
    KAFKA_SSL_CA_LOCATION=/etc/kafka/ca.crt   -> ssl.ca.location=/etc/kafka/ca.crt
    KAFKA_SASL_OAUTHBEARER_METHOD=oidc        -> sasl.oauthbearer.method=oidc

Guarantees:

- only connection properties pass (security, SASL, TLS, sockets, DNS, client identity: see
  :data:`ALLOWED_PREFIXES`): absync sets the delivery guarantees itself (idempotence, acks,
  isolation level, transactions, offsets), so ``KAFKA_ENABLE_AUTO_COMMIT`` or
  ``KAFKA_ISOLATION_LEVEL`` are refused with a clear error, never applied;
- variables that are no client property by design are ignored: ``KAFKA_BOOTSTRAP_SERVERS`` (read by
  :class:`streams.settings.Settings`), the Kafka tools' JVM variables (``KAFKA_HEAP_OPTS``,
  ``KAFKA_OPTS``...) and the service links Kubernetes injects for a Service called ``kafka...``
  (``KAFKA_PORT``, ``KAFKA_SERVICE_HOST``...);
- any other ``KAFKA_*`` variable is an error that names it: a typo never silently turns TLS off;
- librdkafka itself checks names and values when a client is built (:mod:`streams.kafka` turns its
  refusal into an error naming the variable);
- values of secret properties (:func:`is_secret`) are never logged: :func:`describe` masks them, and
  :class:`streams.settings.Settings` holds every value as a ``SecretStr``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

ENV_PREFIX = "KAFKA_"

ALLOWED_PREFIXES = (
    "security.protocol",
    "sasl.",
    "ssl.",
    "enable.ssl.certificate.verification",
    "enable.sasl.oauthbearer.unsecure.jwt",
    "https.ca.",
    "client.id",
    "client.rack",
    "client.dns.lookup",
    "socket.",
    "broker.address.",
    "reconnect.backoff.",
    "connections.max.idle.ms",
    "metadata.max.age.ms",
    "topic.metadata.refresh.",
    "debug",
)
"""librdkafka properties accepted from ``KAFKA_*`` (a name starts with one of these)."""

NOT_CLIENT_PROPERTIES = frozenset(
    {
        "KAFKA_BOOTSTRAP_SERVERS",  # Settings.bootstrap_servers
        "KAFKA_HEAP_OPTS",
        "KAFKA_OPTS",
        "KAFKA_JVM_PERFORMANCE_OPTS",
        "KAFKA_JMX_OPTS",
        "KAFKA_JMX_PORT",
        "KAFKA_LOG4J_OPTS",
        "KAFKA_GC_LOG_OPTS",
        "KAFKA_HOME",
        "KAFKA_LOG_DIR",
        "KAFKA_VERSION",
    }
)
"""``KAFKA_*`` variables that are not client properties (ignored, never passed to librdkafka)."""

_SERVICE_LINK = re.compile(r"^KAFKA\w*_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?)$")
"""Kubernetes service links: ``<SERVICE>_SERVICE_HOST``, ``<SERVICE>_PORT_9092_TCP_ADDR``..."""

_SECRET_WORDS = ("password", "secret", "pem", "oauthbearer.config", "assertion", "token")


class KafkaConfigError(ValueError):
    """A ``KAFKA_*`` variable is not a connection property absync accepts (the message names it)."""


def property_name(variable: str) -> str:
    """``KAFKA_SASL_USERNAME`` -> ``sasl.username``."""
    return variable[len(ENV_PREFIX) :].lower().replace("_", ".")


def is_secret(name: str) -> bool:
    """True for properties whose value must never be shown (passwords, keys, client secrets)."""
    return any(word in name for word in _SECRET_WORDS)


def is_allowed(name: str) -> bool:
    """True for a name :data:`ALLOWED_PREFIXES` admits (``socket.`` admits ``socket.timeout.ms``)."""
    return any(
        name.startswith(prefix) if prefix.endswith(".") else name == prefix or name.startswith(prefix + ".")
        for prefix in ALLOWED_PREFIXES
    )


def from_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The librdkafka properties given as ``KAFKA_*`` variables; raises :class:`KafkaConfigError`
    naming every variable that is not an accepted connection property."""
    env = os.environ if environ is None else environ
    properties: dict[str, str] = {}
    refused: list[str] = []
    for variable in sorted(env):
        if not variable.startswith(ENV_PREFIX) or variable in NOT_CLIENT_PROPERTIES:
            continue
        if _SERVICE_LINK.match(variable):
            continue
        name = property_name(variable)
        if not is_allowed(name):
            refused.append(f"{variable} ({name})")
            continue
        properties[name] = env[variable]
    if refused:
        raise KafkaConfigError(
            "not a Kafka connection property absync accepts: "
            + ", ".join(refused)
            + ". KAFKA_* variables set librdkafka's connection properties only (names starting with "
            + ", ".join(ALLOWED_PREFIXES)
            + "); absync sets delivery guarantees itself. Unset the variable or fix its name."
        )
    return properties


def describe(properties: Mapping[str, str]) -> dict[str, str]:
    """The properties for a log line: secret values masked."""
    return {name: "***" if is_secret(name) else value for name, value in sorted(properties.items())}


def to_environ(properties: Mapping[str, str]) -> dict[str, str]:
    """The inverse of :func:`from_environ`: ``sasl.username`` -> ``KAFKA_SASL_USERNAME`` (to hand a
    client configuration to a child process)."""
    return {ENV_PREFIX + name.upper().replace(".", "_"): value for name, value in properties.items()}


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of an env file (as deploy/local/broker.sh writes them); comments and
    blank lines skipped, no shell expansion."""
    values: dict[str, str] = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip()
    return values
