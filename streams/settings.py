"""Typed, frozen settings, read from the environment (prefix ``ABSYNC_``) with embedded defaults.

Every default runs the service on one machine (``make run``); production overrides by environment.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from streams import kafka_env

REPO_ROOT = Path(__file__).resolve().parent.parent

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
DAY = 86400.0
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

# Embedded default key for local runs only: production must set ABSYNC_SECRET_KEY.
DEV_SECRET_KEY = "ZGV2LW9ubHkta2V5LWNoYW5nZS1tZS1pbi1wcm9kISE="


def parse_duration(text: str) -> float:
    """'5m' -> 300.0, '1.5s' -> 1.5, '250ms' -> 0.25, '24h' -> 86400.0 (seconds)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 5s, 5m, 1h, 1d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ABSYNC_", frozen=True, extra="ignore")

    # Kafka
    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias="KAFKA_BOOTSTRAP_SERVERS",
        description="Kafka bootstrap servers (env KAFKA_BOOTSTRAP_SERVERS).",
    )
    kafka_properties: tuple[tuple[str, SecretStr], ...] = Field(
        default_factory=lambda: tuple((k, SecretStr(v)) for k, v in kafka_env.from_environ().items()),
        description="librdkafka connection properties (env KAFKA_<PROPERTY>, see streams/kafka_env.py).",
    )
    topic_prefix: str = ""
    partitions: int = 6
    replication_factor: int = 1
    min_insync_replicas: int = 1
    group_prefix: str = "absync"
    # Schema registry (Confluent-compatible; see docs/producing.md "Schemas and compatibility")
    schema_registry_url: str | None = None
    """Reads the Confluent wire format when set (comma-separated URLs; no credentials in it)."""
    schema_registry_username: str | None = None
    schema_registry_password: SecretStr | None = None
    """HTTP basic auth of the registry (API key and secret on Confluent Cloud); never logged."""
    schema_registry_ca_location: str | None = None
    """CA bundle of an HTTPS registry with a private CA."""
    schema_registry_timeout: float = Field(default=5.0, gt=0, le=60)
    schema_registry_retry_for: float = Field(default=300.0, ge=0, le=86400)
    """Seconds a record waits for a registry that does not answer before it is dead-lettered."""
    schema_registry_unknown_id_retry_for: float = Field(default=30.0, ge=0, le=86400)
    """Seconds a record waits for a schema id the registry says it does not have."""
    max_event_bytes: int = Field(default=65_536, gt=0)
    """Largest encoded AbsenceEvent accepted; a larger one is dead-lettered (kind ``too-large``)."""
    max_record_bytes: int = Field(default=900_000, ge=65_536)
    """Largest record absync writes (key + value + headers): below librdkafka's message.max.bytes
    (1,000,000) and Kafka's default max.message.bytes (1,048,588). A larger output replaces its input
    by a dead letter; a dead-letter copy over it is truncated (streams/deadletter.py)."""

    # Retries: exactly 5m/15m/1h/24h by default.
    retry_delays: Annotated[tuple[float, ...], NoDecode] = (300.0, 900.0, 3600.0, 86400.0)
    connector_timeout: float = 10.0
    attempt_deadline: float = 0.0
    """Seconds one delivery attempt may take in all (0: three connector timeouts, or three of the
    destination's own timeout); past it the attempt ends as a retryable timeout."""
    delivery_concurrency: int = 64
    http_transport: Literal["httpx", "aiohttp"] = "aiohttp"
    """ABSYNC_HTTP_TRANSPORT: what carries the HTTP connector's httpx requests: httpcore (httpx's own)
    or aiohttp (httpx-aiohttp); the egress policy holds for both (connectors/egress_clients.py)."""
    stall_timeout: float = 180.0
    """A processor loop that makes no progress this long ends the process (see StallWatchdog)."""

    # Storage and HTTP
    data_dir: Path = REPO_ROOT / ".data"
    state_backend: Literal["memory", "disk"] = "memory"
    """ABSYNC_STATE_BACKEND: where the changelog-backed stores keep their partitions (streams/state.py):
    ``memory`` (dicts) or ``disk`` (a SQLite file per changelog partition under data_dir/state/)."""
    database_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    live_streams_per_token: Annotated[int, Field(ge=1, le=10_000)] = 16
    """ABSYNC_LIVE_STREAMS_PER_TOKEN: live streams (``/deliveries/stream``) one token may hold open in
    a web process; one more is a 429 (absync/web/feed.py)."""
    live_streams: Annotated[int, Field(ge=1, le=100_000)] = 500
    """ABSYNC_LIVE_STREAMS: live streams open in a web process at most."""
    exports_per_token: Annotated[int, Field(ge=1, le=1_000)] = 2
    """ABSYNC_EXPORTS_PER_TOKEN: CSV exports (``/deliveries/export.csv``) one token may stream at once
    in a web process; one more is a 429 (absync/web/export.py). Each holds a database connection."""
    exports: Annotated[int, Field(ge=1, le=10_000)] = 8
    """ABSYNC_EXPORTS: CSV exports streaming in a web process at most (keep it under the database
    pool's size)."""

    # Secrets
    secret_key: SecretStr = SecretStr(DEV_SECRET_KEY)

    # Personal data (docs/privacy.md)
    payload_retention: float = 90 * DAY
    """ABSYNC_PAYLOAD_RETENTION (a duration: ``90d``, ``36h``...; default 90 days): how long the
    payloads and responses of deliveries stay in the view, and the retention of ``delivery-status``
    (its records carry them). At least one hour."""

    log_level: str = "INFO"
    env: Literal["production", "development"] = "production"
    """ABSYNC_ENV. Production unless told otherwise: development conveniences (the embedded secret key,
    loopback destinations) are opt-in with ``ABSYNC_ENV=development``."""
    allowed_networks: Annotated[tuple[str, ...], NoDecode] = ()
    """ABSYNC_ALLOWED_NETWORKS: comma-separated CIDRs that destinations may reach although the egress
    policy refuses them by default (private, loopback... see connectors/egress.py)."""

    # Operator API edges (absync/web)
    max_request_bytes: int = Field(default=1_000_000, gt=0)
    """Largest request body the HTTP API reads (413 beyond, before any parsing or authentication)."""
    metrics_token: SecretStr | None = None
    """Bearer token for ``/metrics`` (besides API tokens not limited to a tenant)."""

    # Destination health (absync/health)
    auto_disable_after: Annotated[float, NoDecode] = 5 * 86400.0
    """ABSYNC_AUTO_DISABLE_AFTER (a duration, default 5d as Svix): a destination failing without a
    single success this long is disabled automatically; 0 never disables."""
    health_interval: Annotated[float, NoDecode] = 60.0
    """ABSYNC_HEALTH_INTERVAL: how often the health component looks (and sends pending alerts)."""

    @field_validator("kafka_properties", mode="before")
    @classmethod
    def _parse_kafka_properties(cls, value: object) -> object:
        """A mapping (tests, code) becomes sorted pairs; every value is held as a secret."""
        if isinstance(value, dict):
            return tuple(sorted(value.items()))
        return value

    @field_validator("retry_delays", mode="before")
    @classmethod
    def _parse_delays(cls, value: object) -> tuple[float, ...]:
        if isinstance(value, str):
            delays = tuple(parse_duration(part) for part in value.split(",") if part.strip())
        elif isinstance(value, list | tuple):
            delays = tuple(parse_duration(v) if isinstance(v, str) else float(v) for v in value)
        else:
            raise ValueError("retry_delays must be a list of durations")
        if not delays or any(d <= 0 for d in delays):
            raise ValueError("retry_delays needs at least one positive delay")
        return delays

    @field_validator("auto_disable_after", "health_interval", mode="before")
    @classmethod
    def _parse_health_durations(cls, value: object) -> float:
        seconds = parse_duration(value) if isinstance(value, str) else float(value)  # type: ignore[arg-type]
        if seconds < 0:
            raise ValueError("a duration cannot be negative")
        return seconds

    @field_validator("payload_retention", mode="before")
    @classmethod
    def _parse_retention(cls, value: object) -> float:
        seconds = parse_duration(value) if isinstance(value, str) else float(value)  # type: ignore[arg-type]
        if seconds < 3600:
            raise ValueError("ABSYNC_PAYLOAD_RETENTION must be at least 1h")
        return seconds

    @field_validator("schema_registry_url")
    @classmethod
    def _registry_url_without_credentials(cls, value: str | None) -> str | None:
        if value and re.search(r"://[^/@,]*@", value):
            raise ValueError(
                "put the schema registry's credentials in ABSYNC_SCHEMA_REGISTRY_USERNAME and "
                "ABSYNC_SCHEMA_REGISTRY_PASSWORD, not in the URL (a URL gets logged)"
            )
        return value or None

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _parse_networks(cls, value: object) -> tuple[str, ...]:
        parts = value.split(",") if isinstance(value, str) else list(value or ())  # type: ignore[call-overload]
        networks = []
        for part in (str(p).strip() for p in parts):
            if not part:
                continue
            try:
                networks.append(str(ipaddress.ip_network(part, strict=False)))
            except ValueError:
                raise ValueError(f"not a network (CIDR): {part!r}") from None
        return tuple(networks)

    @property
    def development(self) -> bool:
        """True with ``ABSYNC_ENV=development`` (never by default)."""
        return self.env == "development"

    @property
    def uses_dev_secret_key(self) -> bool:
        """True when the key that encrypts (the first, newest one) is the embedded development key;
        the development key may stay listed after it, to decrypt secrets written before a rotation."""
        return self.secret_key.get_secret_value().split(",")[0].strip() == DEV_SECRET_KEY

    @property
    def sqlalchemy_url(self) -> str:
        """The projection database: ABSYNC_DATABASE_URL, else a SQLite file under data_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'absync.db'}"


class InsecureSettings(RuntimeError):
    """The settings are fit for development only and the environment is production."""


def require_production_ready(settings: Settings) -> None:
    """Refuses the embedded development key outside ``ABSYNC_ENV=development``.

    The key encrypts destination secrets in Kafka; the embedded one is public (it is in this file),
    so secrets encrypted with it are as good as clear text.
    """
    if settings.uses_dev_secret_key and not settings.development:
        raise InsecureSettings(
            "ABSYNC_SECRET_KEY is not set: the embedded development key is refused in production. "
            "Set ABSYNC_SECRET_KEY to a key of your own (a Fernet key: "
            "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`), "
            "or ABSYNC_ENV=development for a local run."
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
