"""A part that cannot be imported stops ``absync`` with the error, never a quieter service.

Each case runs the real ``absync`` entry point in a subprocess in which one module cannot be
imported (its entry in ``sys.modules`` is ``None``: what Python raises for a module that is missing or
broken), and checks the exit status and the message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_absync(
    blocked_module: str, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\n"
        f"sys.modules[{blocked_module!r}] = None\n"
        "from absync.cli import main\n"
        f"sys.exit(main({list(argv)!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("module", ["processors.slack_scheduler", "projections.runner"])
def test_run_stops_when_a_component_cannot_be_imported(module: str, tmp_path: Path) -> None:
    # Points at a port where nothing listens: the import error must come before any connection.
    result = run_absync(
        module,
        "run",
        "--no-create-topics",
        env={
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "ABSYNC_DATA_DIR": str(tmp_path),
            "ABSYNC_ENV": "development",
        },
    )
    assert result.returncode != 0
    assert module in result.stderr
    assert "absync starting" not in result.stdout + result.stderr


def test_cli_stops_when_a_sub_command_cannot_be_imported() -> None:
    # The listing imports no sub-command (absync/cli.py) but checks that each module is there.
    result = run_absync("absync.commands.resync", "--help")
    assert result.returncode != 0
    assert "absync.commands.resync" in result.stderr


@pytest.mark.parametrize(
    "blocked", ["absync.commands.resync", "processors.resync"], ids=["its-module", "what-it-imports"]
)
def test_a_chosen_sub_command_that_cannot_be_imported_stops_the_cli(blocked: str) -> None:
    result = run_absync(blocked, "resync", "--help")
    assert result.returncode != 0
    assert blocked in result.stderr
    assert "usage:" not in result.stdout


def test_cli_lists_every_sub_command() -> None:
    result = run_absync("absync_no_such_module", "--help")
    assert result.returncode == 0
    for name in ("run", "publish", "destinations", "tokens", "resync", "replay-failed"):
        assert name in result.stdout
