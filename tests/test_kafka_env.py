"""KAFKA_* variables -> librdkafka connection properties: what passes, what is refused (with the
variable named), what is ignored, and that secret values never show."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.kafka import KafkaAccessError, check_access, connection_config, kafka_properties, make_admin
from streams.kafka_env import KafkaConfigError, describe, from_environ, read_env_file, to_environ
from streams.settings import Settings


def test_connection_properties_pass_with_dots_for_underscores() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "broker:9093",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "absync",
        "KAFKA_SASL_PASSWORD": "s3cret-value",
        "KAFKA_SSL_CA_LOCATION": "/etc/kafka/ca.crt",
        "KAFKA_SASL_OAUTHBEARER_METHOD": "oidc",
        "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": "oidc-secret",
        "PATH": "/usr/bin",
    }
    assert from_environ(env) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "absync",
        "sasl.password": "s3cret-value",
        "ssl.ca.location": "/etc/kafka/ca.crt",
        "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.client.secret": "oidc-secret",
    }
    assert from_environ(to_environ(from_environ(env))) == from_environ(env)


@pytest.mark.parametrize(
    "variable", ["KAFKA_ENABLE_AUTO_COMMIT", "KAFKA_ISOLATION_LEVEL", "KAFKA_TRANSACTIONAL_ID"]
)
def test_a_property_absync_sets_itself_is_refused_by_name(variable: str) -> None:
    with pytest.raises(KafkaConfigError, match=variable):
        from_environ({variable: "x", "KAFKA_SASL_USERNAME": "absync"})


def test_a_typo_in_an_accepted_family_is_refused_by_librdkafka_when_the_client_is_built() -> None:
    settings = Settings(kafka_properties=from_environ({"KAFKA_SSL_CA_LOCATON": "/ca.crt"}))  # type: ignore[call-arg]
    with pytest.raises(KafkaConfigError, match=r"ssl\.ca\.locaton"):
        make_admin(settings)


def test_kubernetes_service_links_and_jvm_variables_are_ignored() -> None:
    env = {
        "KAFKA_PORT": "tcp://10.0.0.1:9092",
        "KAFKA_SERVICE_HOST": "10.0.0.1",
        "KAFKA_SERVICE_PORT": "9092",
        "KAFKA_PORT_9092_TCP_ADDR": "10.0.0.1",
        "KAFKA_KAFKA_BOOTSTRAP_SERVICE_PORT_TCP_REPLICATION": "9091",
        "KAFKA_HEAP_OPTS": "-Xmx1g",
        "KAFKA_OPTS": "-Dx=y",
    }
    assert from_environ(env) == {}


def test_secret_values_never_show_in_settings_or_log_descriptions() -> None:
    settings = Settings(kafka_properties={"sasl.username": "absync", "sasl.password": "s3cret-value"})  # type: ignore[call-arg]
    assert "s3cret-value" not in repr(settings) and "s3cret-value" not in str(settings.model_dump())
    assert describe(kafka_properties(settings)) == {"sasl.password": "***", "sasl.username": "absync"}
    assert connection_config(settings)["sasl.password"] == "s3cret-value"  # only the client gets it


def test_env_files_are_read_without_shell_expansion(tmp_path: Path) -> None:
    path = tmp_path / "absync.env"
    path.write_text("# comment\nKAFKA_SASL_PASSWORD=a$b=c\n\nKAFKA_BOOTSTRAP_SERVERS=h:1\n")
    assert read_env_file(path) == {"KAFKA_SASL_PASSWORD": "a$b=c", "KAFKA_BOOTSTRAP_SERVERS": "h:1"}


def test_no_broker_answering_ends_the_check_with_what_to_check() -> None:
    nowhere = Settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9", kafka_properties={})  # type: ignore[call-arg]
    with pytest.raises(KafkaAccessError, match=r"did not answer within 2 s.*KAFKA_BOOTSTRAP_SERVERS"):
        check_access(nowhere, timeout=2.0)


def test_librdkafka_debug_contexts_pass() -> None:
    assert from_environ({"KAFKA_DEBUG": "security,broker"}) == {"debug": "security,broker"}
