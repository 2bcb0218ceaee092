"""The three-broker cluster of deploy/local/cluster.sh, started for the module and stopped after it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from streams.settings import REPO_ROOT

SCRIPT = REPO_ROOT / "deploy" / "local" / "cluster.sh"


def cluster_sh(*args: str) -> str:
    """Runs ``cluster.sh ARGS`` and returns its output; fails the test with the output if it fails."""
    result = subprocess.run(
        ["bash", str(SCRIPT), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=dict(os.environ),
    )
    assert result.returncode == 0, f"cluster.sh {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result.stdout.strip()


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """Bootstrap servers of the three nodes, all up; the cluster is stopped after the module."""
    try:
        yield cluster_sh("start").splitlines()[-1]
    finally:
        cluster_sh("stop")
