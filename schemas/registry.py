"""A Confluent-compatible schema registry, seen from absync: writer schemas by id (read side) and the
id of our own schema under a subject (write side).

The HTTP client is confluent-kafka's own :class:`confluent_kafka.schema_registry.SchemaRegistryClient`
(basic auth, TLS, several URLs), with its retries turned off: the caller decides when to try again
(:mod:`processors.validation` pauses the partition and retries with back-off, then dead-letters).

Guarantees:

- a schema id that was fetched once is never fetched again (parsed schemas are cached by id; ids are
  immutable in a registry), so a registry outage does not touch records of known ids;
- a failure is classified: :class:`~schemas.errors.RegistryUnavailableError` (no answer: down, timeout,
  server error, credentials refused) and :class:`~schemas.errors.UnknownSchemaIdError` (the registry
  says the id does not exist) are retryable; a schema that is not Avro, has references or does not
  parse is a permanent :class:`~schemas.errors.DecodeError`;
- an id given up on (:meth:`SchemaRegistryResolver.give_up`: a record of it waited its whole budget
  and the registry still said "no such id") is still asked for, but a "no" is then marked
  ``given_up`` for ``GIVE_UP_MEMORY`` seconds, so that the records after it (a producer pointed at
  another registry) are dead-lettered at once instead of each waiting the budget again;
- after a registry that did not answer, look-ups of ids not cached fail at once for ``cooldown``
  seconds instead of waiting for the registry again: a hung registry costs one timeout per cooldown,
  not one per record;
- error messages carry neither the password nor the URL's credentials (they end up in dead-letter
  headers and logs).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from typing import Any

import fastavro

from schemas.errors import (
    DecodeError,
    RegistryUnavailableError,
    SchemaError,
    SchemaNotFoundError,
    UnknownSchemaIdError,
)

CACHE_SIZE = 1000
"""Parsed writer schemas kept (by id). Ids come from records, so the cache is bounded."""
MAX_SCHEMA_CHARS = 1_000_000
"""A writer schema longer than this is refused (a registry is trusted, but every input has a bound)."""
GIVE_UP_MEMORY = 3600.0
"""Seconds an id given up on stays given up (see the module docstring)."""
REGISTER_PAUSES = (0.5, 1.0, 2.0)
"""Pauses between the tries of a registration answered with a 5xx (see ``register``)."""
UNKNOWN_ID_ERROR = 40403
"""The registry's error code for "Schema not found" (with HTTP 404)."""


class _ServerError(RegistryUnavailableError):
    """The registry answered a registration with a 5xx: tried again by ``register``."""


class SchemaRegistryResolver:
    """Writer schemas by id from a Confluent-compatible registry, cached; registration of ours.

    Thread-safe. ``username``/``password`` are sent as HTTP basic auth; ``ca_location`` is a CA bundle
    for an HTTPS registry with a private CA. ``timeout`` bounds each HTTP request (seconds).
    """

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_location: str | None = None,
        timeout: float = 5.0,
        cooldown: float = 5.0,
    ) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        conf: dict[str, Any] = {"url": url, "timeout": timeout, "max.retries": 0}
        if username or password:
            conf["basic.auth.user.info"] = f"{username or ''}:{password or ''}"
        if ca_location:
            conf["ssl.ca.location"] = ca_location
        self._client = SchemaRegistryClient(conf)
        self._secrets = [s for s in (password, f"{username}:{password}" if password else None) if s]
        self._cooldown = cooldown
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._down_until = 0.0
        self._down_reason = ""
        self._given_up: OrderedDict[int, float] = OrderedDict()
        self._lock = threading.Lock()

    def schema(self, schema_id: int) -> Any:
        """The parsed writer schema of ``schema_id``; raises as the module docstring says."""
        with self._lock:
            cached = self._cache.get(schema_id)
            if cached is not None:
                return cached
            if time.monotonic() < self._down_until:
                raise RegistryUnavailableError(
                    f"schema id {schema_id}: schema registry unavailable ({self._down_reason})"
                )
            text = self._fetch(schema_id)
            parsed = _parse(schema_id, text)
            self._cache[schema_id] = parsed
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            return parsed

    def give_up(self, schema_id: int) -> None:
        """A record of ``schema_id`` waited its whole budget: the next "no such id" is final."""
        with self._lock:
            self._given_up[schema_id] = time.monotonic() + GIVE_UP_MEMORY
            self._given_up.move_to_end(schema_id)
            if len(self._given_up) > CACHE_SIZE:
                self._given_up.popitem(last=False)

    def register(self, subject: str, schema_text: str, *, auto_register: bool = True) -> int:
        """The id of ``schema_text`` under ``subject``: registers it (``auto_register``) or looks it up
        (for registries where producers may not register). Raises
        :class:`~schemas.errors.RegistryUnavailableError`, :class:`~schemas.errors.SchemaNotFoundError`
        (not registered, auto-registration off) or :class:`~schemas.errors.SchemaError` (refused).

        A registry that *answered* with a server error (5xx: a storage lock timeout, Confluent's
        "error forwarding to the leader") is asked again, ``REGISTER_TRIES`` times in all with a short
        pause: registering is idempotent, and a publisher should not fail to start for a blip. No
        answer at all (down, timeout) is not retried here: that is the caller's to decide."""
        for pause in REGISTER_PAUSES:
            try:
                return self._register_once(subject, schema_text, auto_register=auto_register)
            except _ServerError:
                time.sleep(pause)
        try:
            return self._register_once(subject, schema_text, auto_register=auto_register)
        except _ServerError as exc:
            raise RegistryUnavailableError(str(exc)) from None

    def _register_once(self, subject: str, schema_text: str, *, auto_register: bool) -> int:
        from confluent_kafka.schema_registry import Schema, SchemaRegistryError

        schema = Schema(schema_text, "AVRO")
        try:
            if auto_register:
                return int(self._client.register_schema(subject, schema))
            schema_id = self._client.lookup_schema(subject, schema).schema_id
            if schema_id is None:
                raise SchemaNotFoundError(f"the registry gave no id for the schema under {subject!r}")
            return int(schema_id)
        except SchemaError:
            raise
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise SchemaNotFoundError(
                    f"schema not registered under subject {subject!r} (and auto-registration is off)"
                ) from None
            if exc.http_status_code in (409, 422):
                raise SchemaError(
                    f"the registry refused the schema under subject {subject!r} "
                    f"(incompatible with the subject's versions, or invalid): {self._describe(exc)}"
                ) from None
            if exc.http_status_code is not None and 500 <= exc.http_status_code <= 599:
                raise _ServerError(f"schema registry: {self._describe(exc)}") from None
            raise RegistryUnavailableError(f"schema registry: {self._describe(exc)}") from None
        except Exception as exc:
            raise RegistryUnavailableError(f"schema registry unreachable: {self._describe(exc)}") from None

    def _fetch(self, schema_id: int) -> str:
        """The schema text of an id (called under the lock)."""
        from confluent_kafka.schema_registry import SchemaRegistryError

        try:
            schema = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404 and exc.error_code == UNKNOWN_ID_ERROR:
                given_up = self._given_up.get(schema_id, 0.0) > time.monotonic()
                raise UnknownSchemaIdError(
                    f"schema id {schema_id} not found in the schema registry", schema_id, given_up=given_up
                ) from None
            raise self._down(schema_id, self._describe(exc)) from None
        except Exception as exc:  # transport errors: refused, reset, DNS, TLS, timeout
            raise self._down(schema_id, self._describe(exc)) from None
        if schema.schema_type not in (None, "AVRO"):
            raise DecodeError(f"schema id {schema_id} is a {schema.schema_type} schema, not Avro")
        if schema.references:
            raise DecodeError(f"schema id {schema_id} has schema references: not supported")
        return str(schema.schema_str)

    def _down(self, schema_id: int, reason: str) -> RegistryUnavailableError:
        self._down_until = time.monotonic() + self._cooldown
        self._down_reason = reason
        return RegistryUnavailableError(f"schema id {schema_id}: schema registry unavailable ({reason})")

    def _describe(self, exc: Exception) -> str:
        from confluent_kafka.schema_registry import SchemaRegistryError

        if isinstance(exc, SchemaRegistryError):
            text = f"HTTP {exc.http_status_code}, error {exc.error_code}: {exc.error_message}"
        else:
            text = f"{type(exc).__name__}: {exc}"
        return self._scrub(text)[:300]

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _parse(schema_id: int, text: str) -> Any:
    if len(text) > MAX_SCHEMA_CHARS:
        raise DecodeError(
            f"schema id {schema_id} is {len(text)} characters long (at most {MAX_SCHEMA_CHARS})"
        )
    try:
        return fastavro.parse_schema(json.loads(text))
    except Exception as exc:  # fastavro raises several kinds on a bad schema
        raise DecodeError(f"schema id {schema_id} is not a valid Avro schema: {type(exc).__name__}") from None
