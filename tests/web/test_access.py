"""Access edges of the API (issue 12 item 7), over real HTTP: who may scrape ``/metrics``, live
streams that end when their token does, tokens that expire, ``/docs`` without a CDN, and destination
ids that tell nothing about other tenants."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import threading

from absync.web.auth import Right as TokenRight
from absync.web.auth import create_token, revoke_token
from projections.db import api_tokens
from schemas.delivery import Status
from tests.web.conftest import METRICS_TOKEN, Api, fact
from tests.web.test_destinations import body


def test_metrics_need_the_metrics_token_or_an_all_tenant_token(api: Api) -> None:
    api.seed(fact(tenant="acme"), fact(tenant="globex"))
    for token in (
        None,
        "absync_not-a-token",
        "metrics-scrape-token-for-tests-onlyX",
        api.tokens["acme-view"],
    ):
        with api.client(token=token) as client:
            refused = client.get("/metrics")
        assert refused.status_code == 401, token
        assert "globex" not in refused.text and refused.headers["www-authenticate"] == "Bearer"
    for token in (METRICS_TOKEN, api.tokens["view"], api.tokens["configure"]):
        with api.client(token=token) as scraper:
            scraped = scraper.get("/metrics")
        assert scraped.status_code == 200
        assert 'tenant="globex"' in scraped.text and 'tenant="acme"' in scraped.text


def test_a_live_stream_ends_when_its_token_is_revoked(api: Api) -> None:
    token = create_token(api.engine, "streamer", TokenRight.VIEW)
    with api.engine.connect() as conn:
        token_id = conn.execute(api_tokens.select().where(api_tokens.c.name == "streamer")).one().id
    lines: list[str] = []
    with api.client(token=token) as client, client.stream("GET", "/api/v1/deliveries/stream") as stream:
        assert stream.status_code == 200
        events = stream.iter_lines()
        assert next(events) == ": connected"
        api.seed(fact(status=Status.ERROR))  # the stream is live: it carries this change
        for line in events:
            lines.append(line)
            if line == "event: deliveries":
                break
        assert revoke_token(api.engine, token_id)
        lines.extend(events)  # ends only when the server closes the stream (client timeout: 30 s)
    assert "event: unauthorized" in lines
    with api.client(token=token) as client:
        assert client.get("/api/v1/deliveries/stream").status_code == 401


def test_expired_tokens_are_refused_like_revoked_ones(api: Api) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = create_token(api.engine, "old", TokenRight.VIEW, expires_at=now - dt.timedelta(seconds=1))
    valid = create_token(api.engine, "new", TokenRight.VIEW, expires_at=now + dt.timedelta(days=90))
    with api.client(token=expired) as client:
        assert client.get("/api/v1/me").status_code == 401
        assert client.post("/console/session", data={"token": expired}).status_code == 401
    with api.client(token=valid) as client:
        assert client.get("/api/v1/me").json()["name"] == "new"


def test_a_stream_ends_when_its_token_expires(api: Api) -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)
    token = create_token(api.engine, "short", TokenRight.VIEW, expires_at=soon)
    with api.client(token=token) as client, client.stream("GET", "/api/v1/deliveries/stream") as stream:
        assert stream.status_code == 200
        lines = list(stream.iter_lines())  # the server ends it (client timeout: 30 s)
    assert lines[0] == ": connected" and "event: unauthorized" in lines


def test_tokens_create_expires_in_and_list_shows_it(api: Api) -> None:
    # The command finds its database from the environment: point it at this test's (either backend).
    database_url = api.engine.url.render_as_string(hide_password=False)
    env = {**os.environ, "ABSYNC_DATA_DIR": str(api.settings.data_dir), "ABSYNC_DATABASE_URL": database_url}
    command = [sys.executable, "-m", "absync", "tokens"]
    created = subprocess.run(
        [*command, "create", "--name", "quarterly", "--right", "view", "--expires-in", "90d"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    with api.client(token=token) as bot:
        assert bot.get("/api/v1/me").status_code == 200
    listed = subprocess.run([*command, "list"], env=env, capture_output=True, text=True, timeout=60)
    row = next(line.split("\t") for line in listed.stdout.splitlines() if "quarterly" in line)
    header = listed.stdout.splitlines()[0].split("\t")
    expires = dt.datetime.fromisoformat(row[header.index("expires_at")])
    assert dt.timedelta(days=89) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(days=90)
    for bad in ("0d", "-1d", "soon", "20000d"):
        refused = subprocess.run(
            [*command, "create", "--name", "x", "--right", "view", "--expires-in", bad],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2 and "--expires-in" in refused.stderr, bad


def test_docs_are_served_locally(api: Api) -> None:
    with api.client() as anonymous:
        page = anonymous.get("/docs")
        assert page.status_code == 200
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sources and all(s.startswith("/docs/static/") for s in sources), sources
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "<script>" not in page.text  # no inline script: the CSP holds
        for source in sources:
            asset = anonymous.get(source)
            assert asset.status_code == 200 and len(asset.content) > 0, source
        assert "SwaggerUIBundle" in anonymous.get("/docs/static/swagger-ui-bundle.js").text
        assert anonymous.get("/docs/static/..%2f..%2f__init__.py").status_code == 404
        assert anonymous.get("/redoc").status_code == 404
        assert anonymous.get("/openapi.json").status_code == 200


def test_creating_an_id_tells_nothing_about_other_tenants(api: Api) -> None:
    """A tenant-limited token creates ids of its own namespace (``acme:...``) only: the answer to
    an id held by another tenant is the answer to an id that nobody holds."""
    with api.client("configure") as admin:
        assert (
            admin.post(
                "/api/v1/destinations", json={"id": "acme-http-demo", "tenant": "globex", **body()}
            ).status_code
            == 201
        )
        squatting = admin.post("/api/v1/destinations", json={"id": "acme:x", "tenant": "globex", **body()})
        assert squatting.status_code == 422  # nobody takes another tenant's namespace
    with api.client("acme-configure") as acme:
        taken = acme.post("/api/v1/destinations", json={"id": "acme-http-demo", **body()})
        free = acme.post("/api/v1/destinations", json={"id": "acme-http-free", **body()})
        assert (taken.status_code, taken.json()) == (free.status_code, free.json())
        assert taken.status_code == 422 and "acme:" in taken.text and "taken" not in taken.text
        assert acme.post("/api/v1/destinations", json={"id": "acme:http-demo", **body()}).status_code == 201
        again = acme.post("/api/v1/destinations", json={"id": "acme:http-demo", **body()})
        assert again.status_code == 409  # its own destination: nothing new to learn


def test_concurrent_streams_of_other_tokens_keep_going(api: Api) -> None:
    """Revoking one token ends its streams only."""
    doomed = create_token(api.engine, "doomed", TokenRight.VIEW)
    with api.engine.connect() as conn:
        doomed_id = conn.execute(api_tokens.select().where(api_tokens.c.name == "doomed")).one().id
    connected, ended = threading.Event(), threading.Event()
    tail: list[str] = []

    def watch() -> None:
        with api.client(token=doomed) as client, client.stream("GET", "/api/v1/deliveries/stream") as s:
            lines = s.iter_lines()
            if next(lines) == ": connected":
                connected.set()
            tail.extend(lines)
        ended.set()

    watcher = threading.Thread(target=watch, daemon=True)
    with api.client("view") as client, client.stream("GET", "/api/v1/deliveries/stream") as stream:
        events = stream.iter_lines()
        assert next(events) == ": connected"
        watcher.start()
        assert connected.wait(30), "the doomed token's stream did not open"
        assert revoke_token(api.engine, doomed_id)
        assert ended.wait(30), "the revoked token's stream did not end"
        assert "event: unauthorized" in tail
        api.seed(fact(status=Status.ERROR))
        assert any(line == "event: deliveries" for line in events)  # the other stream still carries
    watcher.join(30)
