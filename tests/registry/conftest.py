"""A real Confluent-compatible schema registry for these tests: Apicurio Registry, started by
deploy/local/registry.sh (built from Maven Central the first time), or the one at
ABSYNC_TEST_SCHEMA_REGISTRY_URL when set. Started once per session, stopped at its end if started here."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "local" / "registry.sh"


@pytest.fixture(scope="session")
def registry_url() -> Iterator[str]:
    given = os.environ.get("ABSYNC_TEST_SCHEMA_REGISTRY_URL")
    if given:
        yield given
        return
    env = {**os.environ, "ABSYNC_REGISTRY_PORT": os.environ.get("ABSYNC_TEST_REGISTRY_PORT", "38081")}
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=1200, check=False
    )
    if started.returncode != 0:
        raise RuntimeError(f"the schema registry did not start:\n{started.stderr[-3000:]}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, timeout=120, check=False)
