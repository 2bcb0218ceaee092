"""The schema registry client (schemas/registry.py) against a registry served on loopback: basic auth,
what is retryable and what is not, the cache during an outage, secrets kept out of messages."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
from pydantic import ValidationError as SettingsError

from schemas.codec import AVRO_DIR, SCHEMA_FILES, AvroCodec
from schemas.errors import DecodeError, RegistryUnavailableError, SchemaUnavailableError, UnknownSchemaIdError
from schemas.registry import SchemaRegistryResolver
from streams.schema_registry import schema_registry
from streams.settings import Settings
from tests.fakes.schema_registry import running_registry
from tests.streams_helpers import make_event

# The schema the codec writes with: the registry's id 1 must name it, as it would in production.
CURRENT_TEXT = (AVRO_DIR / SCHEMA_FILES["AbsenceEvent"][-1]).read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_basic_auth_is_sent_and_a_wrong_password_is_an_outage_without_the_password() -> None:
    with running_registry({1: CURRENT_TEXT}) as registry:
        registry.password = "pa55-w0rd-xyz"
        settings = Settings(
            schema_registry_url=registry.url,
            schema_registry_username="absync",
            schema_registry_password="pa55-w0rd-xyz",  # type: ignore[arg-type]
        )
        resolver = schema_registry(settings)
        assert resolver is not None
        assert resolver.schema(1)["name"] == "com.absync.events.AbsenceEvent"
        assert registry.authorizations[-1] is not None and registry.authorizations[-1].startswith("Basic ")

        wrong = SchemaRegistryResolver(registry.url, username="absync", password="not-the-pa55-w0rd")
        with pytest.raises(RegistryUnavailableError) as refused:
            wrong.schema(1)
    assert "401" in str(refused.value)
    assert "pa55" not in str(refused.value) and "not-the" not in str(refused.value)
    assert "pa55" not in repr(settings) and "pa55" not in str(settings.model_dump())


def test_an_unknown_id_and_an_unreachable_registry_are_retryable_and_told_apart() -> None:
    with running_registry({1: CURRENT_TEXT}) as registry:
        resolver = SchemaRegistryResolver(registry.url)
        with pytest.raises(UnknownSchemaIdError, match="schema id 7 not found"):
            resolver.schema(7)
    down = SchemaRegistryResolver(f"http://127.0.0.1:{free_port()}", timeout=2.0)
    with pytest.raises(RegistryUnavailableError, match="schema registry unavailable"):
        down.schema(1)
    assert issubclass(UnknownSchemaIdError, SchemaUnavailableError)
    assert issubclass(RegistryUnavailableError, SchemaUnavailableError)


def test_a_cached_id_needs_no_registry_and_an_outage_is_not_asked_again_during_the_cooldown() -> None:
    event = make_event()
    with running_registry({1: CURRENT_TEXT}) as registry:
        resolver = SchemaRegistryResolver(registry.url, cooldown=60.0)
        codec = AvroCodec("AbsenceEvent", resolver)
        data = codec.encode_confluent(event.to_avro(), 1)
        assert data[:5] == b"\x00" + struct.pack(">I", 1)
        assert codec.decode(data)["event_id"] == event.event_id
    # The registry is gone: id 1 is served from the cache, id 2 fails, and fails again at once.
    assert codec.decode(data)["event_id"] == event.event_id
    with pytest.raises(RegistryUnavailableError):
        resolver.schema(2)
    with pytest.raises(RegistryUnavailableError, match="schema registry unavailable"):
        resolver.schema(3)
    assert registry.requests == ["/schemas/ids/1"]


def test_a_schema_that_is_not_avro_is_a_permanent_error() -> None:
    with running_registry({5: "syntax = 'proto3'; message M {}", 6: "{not json"}) as registry:
        registry.schema_types[5] = "PROTOBUF"
        resolver = SchemaRegistryResolver(registry.url)
        with pytest.raises(DecodeError, match="PROTOBUF schema, not Avro") as protobuf:
            resolver.schema(5)
        with pytest.raises(DecodeError, match="not a valid Avro schema") as garbage:
            resolver.schema(6)
    assert not isinstance(protobuf.value, SchemaUnavailableError)
    assert not isinstance(garbage.value, SchemaUnavailableError)


def test_a_registry_url_with_credentials_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="ABSYNC_SCHEMA_REGISTRY_PASSWORD"):
        Settings(schema_registry_url="https://key:secret@registry.example.com")
    assert Settings(schema_registry_url="https://registry.example.com").schema_registry_url
    assert schema_registry(Settings()) is None


def test_a_registration_answered_with_a_5xx_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry answering 500 while its leader moves: registering is idempotent, so it is asked
    again (REGISTER_PAUSES); past the last try the error is an outage, not a schema error."""
    monkeypatch.setattr("schemas.registry.REGISTER_PAUSES", (0.01, 0.01, 0.01))
    with running_registry({1: CURRENT_TEXT}) as registry:
        resolver = SchemaRegistryResolver(registry.url)
        registry.fail_registrations = [500, 503]
        assert resolver.register("absences-value", CURRENT_TEXT) == 1
        assert len(registry.registrations) == 1 and registry.fail_registrations == []

        registry.fail_registrations = [500] * 4
        with pytest.raises(RegistryUnavailableError, match="500"):
            resolver.register("deliveries-value", CURRENT_TEXT)  # another subject: not in the cache
        assert registry.fail_registrations == [], "four tries in all"
    assert [path.split("?")[0] for path in registry.registrations] == ["/subjects/absences-value/versions"]
