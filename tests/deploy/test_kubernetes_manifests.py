"""deploy/kubernetes: every manifest is valid, typos are caught, and nothing drifts from the code.

Built-in kinds are validated with ``kubernetes-validate`` (PyPI; it ships the Kubernetes OpenAPI
schemas, strict variant: unknown fields are errors), so the test needs no network. The Strimzi, KEDA
and Kustomize kinds are validated with ``jsonschema`` against the strict schemas of
tests/deploy/schemas/ (written for the fields used, closed objects; see their headers).
"""

from __future__ import annotations

import copy
import importlib.util
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from absync.service import COMPONENTS
from streams import acls
from streams.kafka import group_id
from streams.kafka_env import from_environ, is_secret, property_name
from streams.settings import REPO_ROOT, Settings
from streams.topics import Topics

MANIFESTS = REPO_ROOT / "deploy" / "kubernetes"
SCHEMAS = Path(__file__).parent / "schemas"
KUBERNETES_VERSION = "1.33.0"
"""The oldest Kubernetes the manifests target (kubernetes-validate ships schemas up to 1.37)."""
SECRET_TEMPLATE = "secret.example.yaml"
CUSTOM_KINDS = {
    "Kafka": "strimzi.yaml",
    "KafkaNodePool": "strimzi.yaml",
    "KafkaTopic": "strimzi.yaml",
    "KafkaUser": "strimzi.yaml",
    "ScaledObject": "keda.yaml",
    "TriggerAuthentication": "keda.yaml",
    "Kustomization": "kustomize.yaml",
    "ServiceMonitor": "prometheus-operator.yaml",
}

Document = dict[str, Any]


def load(name: str) -> list[Document]:
    return [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]


def manifest_files() -> list[str]:
    return sorted(p.name for p in MANIFESTS.glob("*.yaml"))


def all_documents() -> list[tuple[str, Document]]:
    return [(name, doc) for name in manifest_files() for doc in load(name)]


def documents_of(kind: str) -> list[Document]:
    return [doc for _, doc in all_documents() if doc["kind"] == kind]


def one(kind: str, name: str) -> Document:
    [doc] = [d for d in documents_of(kind) if d["metadata"]["name"] == name]
    return doc


@cache
def custom_schema(kind: str) -> dict[str, Any]:
    """The schema of ``kind``, with its file's shared ``$defs`` so local references resolve."""
    content = yaml.safe_load((SCHEMAS / CUSTOM_KINDS[kind]).read_text())
    return {"$defs": content.get("$defs", {}), **content[kind]}


def validate(doc: Document) -> None:
    """Raises if ``doc`` breaks its schema (or its kind has none)."""
    kind = doc["kind"]
    if kind in CUSTOM_KINDS:
        schema = custom_schema(kind)
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.Draft202012Validator(schema).validate(doc)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def ids(docs: list[tuple[str, Document]]) -> list[str]:
    return [
        f"{name}:{doc['kind']}/{doc['metadata']['name'] if 'metadata' in doc else ''}" for name, doc in docs
    ]


@pytest.mark.parametrize(("name", "doc"), all_documents(), ids=ids(all_documents()))
def test_every_manifest_is_valid(name: str, doc: Document) -> None:
    validate(doc)


def at(doc: Document, path: str) -> dict[str, Any]:
    """The mapping at a dotted path (an integer part indexes a list)."""
    node: Any = doc
    for part in path.split(".") if path else []:
        node = node[int(part)] if part.isdigit() else node[part]
    assert isinstance(node, dict)
    return node


TYPOS = [
    ("Deployment", "absync-api", "spec.template.spec.containers.0", "readinessProbe", "readynessProbe"),
    (
        "Deployment",
        "absync-delivery",
        "spec.template.spec",
        "terminationGracePeriodSeconds",
        "terminationGracePeriod",
    ),
    ("Service", "absync-api", "spec.ports.0", "targetPort", "targetport"),
    ("ConfigMap", "absync-config", "", "data", "datas"),
    ("Kafka", "absync-kafka", "spec.kafka", "listeners", "listener"),
    ("Kafka", "absync-kafka", "spec", "entityOperator", "entityOperators"),
    ("Kafka", "absync-kafka", "spec.kafka.listeners.0", "tls", "tsl"),
    ("KafkaNodePool", "brokers", "spec", "roles", "role"),
    ("KafkaNodePool", "controllers", "spec.storage.volumes.0", "kraftMetadata", "kraftMetaData"),
    ("KafkaTopic", "absences", "spec", "partitions", "partition"),
    ("KafkaTopic", "absences", "spec", "replicas", "replication"),
    ("Kafka", "absync-kafka", "spec.kafka.listeners.0", "authentication", "authentification"),
    ("Kafka", "absync-kafka", "spec.kafka", "authorization", "authorisation"),
    ("KafkaUser", "absync", "spec", "authorization", "authorisation"),
    ("KafkaUser", "absync", "spec.authorization.acls.0", "operations", "operation"),
    ("KafkaUser", "absync", "spec.authorization.acls.0.resource", "patternType", "pattern"),
    ("TriggerAuthentication", "absync-keda", "spec", "secretTargetRef", "secretTargetRefs"),
    ("ScaledObject", "absync-delivery", "spec", "maxReplicaCount", "maxReplicas"),
    ("ScaledObject", "absync-fanout", "spec.triggers.0.metadata", "consumerGroup", "consumergroup"),
    ("Kustomization", "", "", "resources", "resource"),
    ("ServiceMonitor", "absync-api", "spec.endpoints.0", "authorization", "authorisation"),
]


@pytest.mark.parametrize(
    ("kind", "name", "path", "field", "typo"), TYPOS, ids=[f"{t[0]}.{t[4]}" for t in TYPOS]
)
def test_a_misspelled_field_is_rejected(kind: str, name: str, path: str, field: str, typo: str) -> None:
    original = next(d for d in documents_of(kind) if d.get("metadata", {}).get("name", "") == name)
    doc = copy.deepcopy(original)
    node = at(doc, path)
    node[typo] = node.pop(field)
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)
    validate(original)


def test_kustomization_applies_every_manifest_but_the_secret_template() -> None:
    [kustomization] = load("kustomization.yaml")
    applied = set(kustomization["resources"])
    assert applied == set(manifest_files()) - {"kustomization.yaml", SECRET_TEMPLATE}
    assert all(doc["kind"] != "Secret" for name in applied for doc in load(name))


def test_the_secret_template_holds_placeholders_only() -> None:
    [secret] = load(SECRET_TEMPLATE)
    assert secret["kind"] == "Secret"
    assert set(secret["stringData"]) == {"ABSYNC_SECRET_KEY", "ABSYNC_DATABASE_URL", "ABSYNC_METRICS_TOKEN"}
    assert all("REPLACE-ME" in value for value in secret["stringData"].values())
    assert "data" not in secret


def generator(name: str = "generate_topics") -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, MANIFESTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_topics_yaml_is_what_the_generator_writes() -> None:
    assert (MANIFESTS / "topics.yaml").read_text() == generator().render()


def test_users_yaml_is_what_the_generator_writes() -> None:
    assert (MANIFESTS / "users.yaml").read_text() == generator("generate_users").render()


def test_each_kafka_user_carries_the_acls_of_its_role(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rules as the local secured broker (streams/acls.py), for the pods' own settings."""
    settings = configmap_settings(monkeypatch)
    users = {u["metadata"]["name"]: u for u in documents_of("KafkaUser")}
    assert {u["metadata"]["annotations"]["absync.dev/role"] for u in users.values()} == set(acls.ROLES)
    for user in users.values():
        expected = [
            {"type": r.type, "name": r.name, "patternType": r.pattern, "operations": list(r.operations)}
            for r in acls.ROLES[user["metadata"]["annotations"]["absync.dev/role"]](settings)
        ]
        declared = [
            {**a["resource"], "operations": a["operations"]} for a in user["spec"]["authorization"]["acls"]
        ]
        assert declared == expected
    # The service's principal is the one the pods authenticate as; the producer may write absences only.
    assert users[settings_value("KAFKA_SASL_USERNAME")]["spec"]["authentication"]["type"] == "scram-sha-512"
    [producer] = [u for u in users.values() if u["metadata"]["annotations"]["absync.dev/role"] == "producer"]
    assert [a["resource"]["name"] for a in producer["spec"]["authorization"]["acls"]] == [
        Topics(settings).absences
    ]


def settings_value(key: str) -> str:
    value: str = one("ConfigMap", "absync-config")["data"][key]
    return value


def test_kafka_has_no_unauthenticated_listener_and_authorizes_every_request() -> None:
    kafka = one("Kafka", "absync-kafka")["spec"]["kafka"]
    assert all(listener["tls"] and listener.get("authentication") for listener in kafka["listeners"])
    assert kafka["authorization"]["type"] == "simple"
    ports = {listener["authentication"]["type"]: listener["port"] for listener in kafka["listeners"]}
    assert settings_value("KAFKA_BOOTSTRAP_SERVERS").endswith(f":{ports['scram-sha-512']}")
    assert (settings_value("KAFKA_SECURITY_PROTOCOL"), settings_value("KAFKA_SASL_MECHANISM")) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
    )


def configmap_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a pod gets from the ConfigMap (and nothing else from this environment)."""
    for name in [*Settings.model_fields, "bootstrap_servers"]:
        monkeypatch.delenv(f"ABSYNC_{name.upper()}", raising=False)
    for key, value in one("ConfigMap", "absync-config")["data"].items():
        monkeypatch.setenv(key, value)
    return Settings()


def test_the_configmap_sets_only_known_settings() -> None:
    data = one("ConfigMap", "absync-config")["data"]
    known = {f"ABSYNC_{name.upper()}" for name in Settings.model_fields} | {"KAFKA_BOOTSTRAP_SERVERS"}
    kafka = {k: v for k, v in data.items() if k.startswith("KAFKA_") and k != "KAFKA_BOOTSTRAP_SERVERS"}
    assert set(data) - set(kafka) <= known
    assert set(from_environ(kafka)) == {property_name(k) for k in kafka}  # connection properties only
    assert not any(is_secret(property_name(k)) for k in kafka)  # the password comes from a Secret


def test_the_pods_settings_name_the_topics_strimzi_creates(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = configmap_settings(monkeypatch)
    expected = {
        spec.name: {
            "partitions": spec.partitions,
            "replicas": spec.replication,
            "config": spec.config,
        }
        for spec in Topics(settings).specs()
    }
    declared = {
        t["spec"]["topicName"]: {k: t["spec"][k] for k in ("partitions", "replicas", "config")}
        for t in documents_of("KafkaTopic")
    }
    assert declared == expected
    assert {t["metadata"]["labels"]["strimzi.io/cluster"] for t in documents_of("KafkaTopic")} == {
        one("Kafka", "absync-kafka")["metadata"]["name"]
    }


def test_kafka_keeps_three_replicas_and_two_in_sync() -> None:
    kafka = one("Kafka", "absync-kafka")
    config = kafka["spec"]["kafka"]["config"]
    assert (config["default.replication.factor"], config["min.insync.replicas"]) == (3, 2)
    assert config["unclean.leader.election.enable"] is False
    pools = documents_of("KafkaNodePool")
    for role in ("controller", "broker"):
        assert sum(p["spec"]["replicas"] for p in pools if role in p["spec"]["roles"]) == 3


def test_keda_scales_each_worker_on_its_own_consumer_group(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = configmap_settings(monkeypatch)
    for component in ("fanout", "delivery"):
        scaled = one("ScaledObject", f"absync-{component}")
        assert (
            scaled["spec"]["scaleTargetRef"]["name"]
            == one("Deployment", f"absync-{component}")["metadata"]["name"]
        )
        mtls = next(
            listener["port"]
            for listener in one("Kafka", "absync-kafka")["spec"]["kafka"]["listeners"]
            if listener["authentication"]["type"] == "tls"
        )
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["metadata"]["consumerGroup"] == group_id(settings, component)
            host = settings.bootstrap_servers.rsplit(":", 1)[0]
            assert trigger["metadata"]["bootstrapServers"] == f"{host}:{mtls}"
            assert trigger["metadata"]["tls"] == "enable"
            auth = one("TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]
            assert {ref["parameter"]: ref["name"] for ref in auth["secretTargetRef"]} == {
                "ca": "absync-kafka-cluster-ca-cert",
                "cert": "absync-keda",
                "key": "absync-keda",
            }
            assert one("KafkaUser", "absync-keda")["spec"]["authentication"]["type"] == "tls"
        # More pods than partitions would sit idle.
        assert scaled["spec"]["maxReplicaCount"] <= settings.partitions
    topics = Topics(settings)
    fanout_triggers = one("ScaledObject", "absync-fanout")["spec"]["triggers"]
    assert sorted(t["metadata"]["topic"] for t in fanout_triggers) == sorted([topics.absences, topics.resync])
    [delivery_trigger] = one("ScaledObject", "absync-delivery")["spec"]["triggers"]
    assert "topic" not in delivery_trigger["metadata"]  # every topic the group reads


def container(deployment: str) -> Document:
    containers: list[Document] = one("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    [only] = containers
    return only


@pytest.mark.parametrize(
    ("deployment", "components"),
    [
        ("absync-fanout", ["fanout"]),
        ("absync-delivery", ["delivery"]),
        ("absync-projection", ["projection", "slack", "health"]),
        ("absync-api", ["http"]),
    ],
)
def test_each_deployment_runs_its_components_with_config_and_secrets(
    deployment: str, components: list[str]
) -> None:
    spec = container(deployment)
    args = spec["args"]
    assert args[0] == "run" and "--no-create-topics" in args  # Strimzi owns the topics
    assert [args[i + 1] for i, a in enumerate(args) if a == "--only"] == components
    assert set(components) <= set(COMPONENTS)
    sources = {(k, v["name"]) for source in spec["envFrom"] for k, v in source.items()}
    assert sources == {("configMapRef", "absync-config"), ("secretRef", "absync-secrets")}
    # Kafka: the KafkaUser's password from its Secret, the cluster CA mounted where the ConfigMap says.
    [password] = [e for e in spec["env"] if e["name"] == "KAFKA_SASL_PASSWORD"]
    user = settings_value("KAFKA_SASL_USERNAME")
    assert password["valueFrom"]["secretKeyRef"] == {"name": user, "key": "password"}
    assert one("KafkaUser", user)["spec"]["authentication"]["type"] == "scram-sha-512"
    ca = Path(settings_value("KAFKA_SSL_CA_LOCATION"))
    [mount] = [m for m in spec["volumeMounts"] if m["mountPath"] == str(ca.parent)]
    volumes = one("Deployment", deployment)["spec"]["template"]["spec"]["volumes"]
    [volume] = [v for v in volumes if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "absync-kafka-cluster-ca-cert"
    assert [item["path"] for item in volume["secret"]["items"]] == [ca.name]
    assert spec["resources"]["requests"] and spec["resources"]["limits"]["memory"]


def test_projection_is_a_single_writer() -> None:
    projection = one("Deployment", "absync-projection")["spec"]
    assert (projection["replicas"], projection["strategy"]["type"]) == (1, "Recreate")


@pytest.mark.kafka
def test_the_api_probes_answer_on_the_configured_port(settings: Settings) -> None:
    """The probe paths of api-deployment.yaml answer 200 from the real app (SQLite, the test broker)."""
    from fastapi.testclient import TestClient

    from absync.web.app import create_app

    api = container("absync-api")
    port = one("ConfigMap", "absync-config")["data"]["ABSYNC_HTTP_PORT"]
    assert [p["containerPort"] for p in api["ports"]] == [int(port)]
    assert {probe["httpGet"]["port"] for probe in (api["livenessProbe"], api["readinessProbe"])} == {"http"}
    with TestClient(create_app(settings)) as client:
        for probe in ("livenessProbe", "readinessProbe"):
            response = client.get(api[probe]["httpGet"]["path"])
            assert response.status_code == 200, response.text


def test_prometheus_scrapes_the_api_with_the_metrics_token() -> None:
    """/metrics needs a token (issue 12 item 7): the ServiceMonitor sends the key the pods read."""
    monitor = one("ServiceMonitor", "absync-api")
    service = one("Service", "absync-api")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "absync-secrets", "key": "ABSYNC_METRICS_TOKEN"},
    }
    [secret] = load(SECRET_TEMPLATE)
    assert "ABSYNC_METRICS_TOKEN" in secret["stringData"]
    assert "ABSYNC_METRICS_TOKEN".removeprefix("ABSYNC_").lower() in Settings.model_fields
    api = one("Deployment", "absync-api")["spec"]["template"]
    assert "prometheus.io/scrape" not in api["metadata"].get("annotations", {})
