"""Schemathesis (CLI, as a subprocess) against the live ``/openapi.json`` with a ``configure`` token:
no 5xx, and every answer matches the published spec. Bounded examples keep it under two minutes.

The event stream is left out: it never ends, which is what it is for.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from schemas.delivery import Status
from tests.web.conftest import Api, attempt, fact

MAX_EXAMPLES = 15


def test_schemathesis_finds_no_server_error(api: Api, tmp_path: Path) -> None:
    delivery = fact(status=Status.ERROR, attempt=attempt())
    api.seed(delivery)
    with api.client("configure") as admin:
        created = admin.post(
            "/api/v1/destinations",
            json={
                "id": "dst-fuzz",
                "tenant": "acme",
                "name": "fuzz",
                "kind": "http",
                "settings": {"url": "http://127.0.0.1:9/"},
            },
        )
        assert created.status_code == 201
    config = tmp_path / "schemathesis.toml"
    # Real ids, so the fuzzing reaches past the 404 of unknown objects.
    config.write_text(
        f'[parameters]\n"path.delivery_id" = "{delivery.delivery_id}"\n"path.destination_id" = "dst-fuzz"\n'
    )
    cli = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [
            str(cli),
            "--config-file",
            str(config),
            "run",
            f"{api.base_url}/openapi.json",
            "--header",
            f"Authorization: Bearer {api.tokens['configure']}",
            "--exclude-path",
            "/api/v1/deliveries/stream",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "1",
            "--request-timeout",
            "20",
            "--exclude-checks",
            "positive_data_acceptance",
            "--no-color",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Missing test data" not in result.stdout, result.stdout[-3000:]
