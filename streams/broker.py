"""The local single-node Kafka broker (KRaft), managed through ``deploy/local/broker.sh``.

The script fetches Kafka's jars from Maven Central (mvn), formats storage once and runs
``java kafka.Kafka`` in the background; it keeps its jars and data under ``.cache/kafka``.
This module only drives it, so the CLI (``absync broker start|stop|status``) and the tests
share one implementation.

The repository root is ``ABSYNC_REPO_ROOT`` if set, else found from this file's location.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

DEFAULT_PORT = 9092
HOST = "127.0.0.1"
# The script waits at most ABSYNC_BROKER_START_TIMEOUT (60 s) for the broker to answer, plus a
# first-time jar fetch; this only guards against a hung script.
SCRIPT_TIMEOUT_S = 900.0


class BrokerError(RuntimeError):
    """broker.sh failed; the message carries its output (which names the log file)."""


def repo_root() -> Path:
    env = os.environ.get("ABSYNC_REPO_ROOT")
    if env:
        return Path(env).resolve()
    for parent in Path(__file__).resolve().parents:
        if (parent / "deploy" / "local" / "broker.sh").is_file():
            return parent
    raise BrokerError("cannot find deploy/local/broker.sh above streams/; set ABSYNC_REPO_ROOT")


def script_path() -> Path:
    path = repo_root() / "deploy" / "local" / "broker.sh"
    if not path.is_file():
        raise BrokerError(f"{path} not found; set ABSYNC_REPO_ROOT to the repository root")
    return path


def resolve_port(port: int | None) -> int:
    if port is not None:
        return port
    return int(os.environ.get("ABSYNC_BROKER_PORT", str(DEFAULT_PORT)))


def bootstrap_for(port: int | None = None) -> str:
    return f"{HOST}:{resolve_port(port)}"


def _run(command: str, port: int | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["ABSYNC_BROKER_PORT"] = str(resolve_port(port))
    return subprocess.run(
        ["bash", str(script_path()), command],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return "\n".join(part.strip() for part in (result.stdout, result.stderr) if part.strip())


def start(port: int | None = None) -> str:
    """Starts the broker (fetching and formatting on first use) unless it runs already.

    Returns the bootstrap servers, ``"127.0.0.1:PORT"``, once the broker answers metadata requests.
    """
    resolved = resolve_port(port)
    result = _run("start", resolved)
    if result.returncode != 0:
        raise BrokerError(f"broker.sh start failed (exit {result.returncode}):\n{_output(result)}")
    log.info("broker_started", bootstrap=bootstrap_for(resolved), detail=result.stdout.strip())
    return bootstrap_for(resolved)


def stop(port: int | None = None) -> None:
    """Stops the broker (SIGTERM, then SIGKILL after 30 s); a no-op when it isn't running."""
    resolved = resolve_port(port)
    result = _run("stop", resolved)
    if result.returncode != 0:
        raise BrokerError(f"broker.sh stop failed (exit {result.returncode}):\n{_output(result)}")
    log.info("broker_stopped", bootstrap=bootstrap_for(resolved), detail=result.stdout.strip())


def status(port: int | None = None) -> bool:
    """True when the broker on ``port`` runs and answers a metadata request."""
    resolved = resolve_port(port)
    result = _run("status", resolved)
    running = result.returncode == 0
    log.debug("broker_status", bootstrap=bootstrap_for(resolved), running=running)
    return running
