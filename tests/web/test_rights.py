"""Every route of the OpenAPI spec, walked with no token, a ``view`` and a ``configure`` token.

The expected answer comes from the rule of issue [C], not from a list of routes: everything under
``/api/`` needs a token; ``/api/v1/destinations...``, ``/api/v1/alerts`` (where destination alerts
go), ``/api/v1/erasures`` (issue 17) and ``/api/v1/audit`` need ``configure``, the rest ``view``;
``/metrics`` needs a token for all tenants (either right; issue 12 item 7); the probes outside
``/api/`` are public.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx

from absync.web.auth import revoke_token
from projections.db import api_tokens
from schemas.delivery import Status
from tests.web.conftest import Api, attempt, fact

METHODS = {"get", "post", "put", "patch", "delete"}


def required_right(path: str) -> str | None:
    if path == "/metrics":
        return "view"
    if not path.startswith("/api/"):
        return None
    configure = ("/api/v1/destinations", "/api/v1/alerts", "/api/v1/erasures", "/api/v1/audit")
    return "configure" if path.startswith(configure) else "view"


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def example_body(spec: dict[str, Any], operation: dict[str, Any]) -> Any:
    """The example of the request body's schema, as published in the spec."""
    body = operation.get("requestBody")
    if body is None:
        return None
    schema = body["content"]["application/json"]["schema"]
    name = schema["$ref"].rsplit("/", 1)[1]
    return spec["components"]["schemas"][name]["example"]


def call(client: httpx.Client, method: str, url: str, body: Any) -> int:
    """Only the status: event streams are closed once their headers arrived."""
    with client.stream(method.upper(), url, json=body) as response:
        return response.status_code


def test_every_route_answers_as_the_rights_say(api: Api) -> None:
    delivery = fact(status=Status.ERROR, attempt=attempt())
    api.seed(delivery)
    with api.client("configure") as admin:
        created = admin.post(
            "/api/v1/destinations",
            json={
                "id": "dst-walk",
                "tenant": "acme",
                "name": "walk",
                "kind": "http",
                "settings": {"url": "http://127.0.0.1:9/"},
            },
        )
        assert created.status_code == 201, created.text
        spec = admin.get("/openapi.json").json()
    ids = {"delivery_id": delivery.delivery_id, "destination_id": "dst-walk"}
    walked = 0
    for path, method, operation in operations(spec):
        url = path.format(**ids)
        body = example_body(spec, operation)
        right = required_right(path)
        if right is not None:
            assert operation.get("security") == [{"HTTPBearer": []}], f"{method} {path} declares no token"
        with api.client() as anonymous, api.client("view") as viewer, api.client("configure") as admin:
            anonymous_status = call(anonymous, method, url, body)
            view_status = call(viewer, method, url, body)
            configure_status = call(admin, method, url, body)
        where = f"{method.upper()} {path}"
        if right is None:
            assert 200 <= anonymous_status < 300, where
        else:
            assert anonymous_status == 401, where
        if right == "configure":
            assert view_status == 403, where
        else:
            assert 200 <= view_status < 300, f"{where}: {view_status}"
        assert 200 <= configure_status < 300, f"{where}: {configure_status}"
        walked += 1
    assert walked == sum(1 for _ in operations(spec)) and walked >= 15


def test_unknown_and_revoked_tokens_get_401(api: Api) -> None:
    with api.client("view") as viewer:
        assert viewer.get("/api/v1/me").status_code == 200
    with api.client(token="absync_not-a-token") as stranger:
        response = stranger.get("/api/v1/me")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    with api.engine.connect() as conn:
        token_id = conn.execute(api_tokens.select().where(api_tokens.c.name == "viewer")).one().id
    assert revoke_token(api.engine, token_id)
    with api.client("view") as viewer:
        assert viewer.get("/api/v1/me").status_code == 401


def test_tokens_command_prints_the_token_once_on_the_last_line(api: Api) -> None:
    # The command finds its database from the environment: point it at this test's (either backend).
    database_url = api.engine.url.render_as_string(hide_password=False)
    env = {**os.environ, "ABSYNC_DATA_DIR": str(api.settings.data_dir), "ABSYNC_DATABASE_URL": database_url}
    command = [sys.executable, "-m", "absync", "tokens"]
    created = subprocess.run(
        [*command, "create", "--name", "ops bot", "--right", "view", "--tenant", "acme"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("absync_")
    with api.client(token=token) as bot:
        assert bot.get("/api/v1/me").json() == {"name": "ops bot", "right": "view", "tenant": "acme"}
    listed = subprocess.run(
        [*command, "list"], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    assert "ops bot" in listed.stdout and token not in listed.stdout
    token_id = next(line.split("\t")[0] for line in listed.stdout.splitlines() if "ops bot" in line)
    subprocess.run([*command, "revoke", token_id], env=env, capture_output=True, check=True, timeout=60)
    with api.client(token=token) as bot:
        assert bot.get("/api/v1/me").status_code == 401
