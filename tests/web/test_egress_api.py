"""Test connection under production's egress policy, through the API an operator uses: absync's own
``/metrics`` and any loopback port answer the same "address not allowed", open or closed."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.egress import NOT_ALLOWED
from streams.settings import Settings
from streams.topics import create_topics
from tests.conftest import delete_topics, make_settings
from tests.web.conftest import Api


@pytest.fixture
def settings(bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    """Production's policy: no allowed network, no development environment."""
    s = make_settings(bootstrap, tmp_path, allowed_networks="")
    create_topics(s)
    yield s
    delete_topics(s)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def shown(answer: dict[str, Any]) -> tuple[Any, ...]:
    """What Test connection tells, without the URL (the port differs) and the timing."""
    return (
        answer["ok"],
        answer["error"],
        [(c["method"], c["response_status"], c["response_body"], c["error"]) for c in answer["calls"]],
    )


def test_loopback_targets_answer_one_uniform_refusal(api: Api) -> None:
    own = api.base_url  # the API itself: /metrics, /healthz...
    targets = {
        "metrics": f"{own}/metrics",
        "spelled": own.replace("127.0.0.1", "2130706433") + "/metrics",
        "mapped": own.replace("127.0.0.1", "[::ffff:127.0.0.1]") + "/metrics",
        "localhost": own.replace("127.0.0.1", "localhost") + "/metrics",
        "closed": f"http://127.0.0.1:{closed_port()}/metrics",
        "metadata": "http://169.254.169.254/latest/meta-data/",
    }
    answers = {}
    with api.client("configure") as admin:
        for name, url in targets.items():
            created = admin.post(
                "/api/v1/destinations",
                json={
                    "id": f"dst-{name}",
                    "tenant": "acme",
                    "name": name,
                    "kind": "http",
                    "settings": {"url": url, "format": "lucca.legacy"},
                },
            )
            assert created.status_code == 201, created.text
            tested = admin.post(f"/api/v1/destinations/dst-{name}/test")
            assert tested.status_code == 200
            answers[name] = tested.json()
    assert {name: shown(a) for name, a in answers.items()} == dict.fromkeys(
        targets, (False, NOT_ALLOWED, [("OPTIONS", None, None, NOT_ALLOWED)])
    )
    assert all("absync_" not in str(a) for a in answers.values())  # no metric name came back
