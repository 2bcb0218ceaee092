"""Runs the real ``absync`` command line in a subprocess, pointed at a test's topics."""

from __future__ import annotations

import os
import subprocess
import sys

from streams.kafka import kafka_properties
from streams.kafka_env import to_environ
from streams.settings import REPO_ROOT, Settings


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        **to_environ(kafka_properties(settings)),
        "ABSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "ABSYNC_PARTITIONS": str(settings.partitions),
        "ABSYNC_RETRY_DELAYS": "1s,2s,3s,4s",
        "ABSYNC_DATA_DIR": str(settings.data_dir),
        "ABSYNC_LOG_LEVEL": "WARNING",
        "ABSYNC_ENV": "development",  # the embedded secret key; loopback receivers
        "ABSYNC_PAYLOAD_RETENTION": "3650d",  # as make_settings: fixed-date facts never age out
        **extra,
    }


def absync(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``absync ARGS...``; returns the finished process (exit code, stdout, stderr)."""
    return absync_in(settings, {}, *args)


def absync_in(settings: Settings, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``absync ARGS...`` with ``env`` over the test's environment (an empty value unsets a variable)."""
    environment = {k: v for k, v in {**cli_env(settings), **env}.items() if v != ""}
    return subprocess.run(
        [sys.executable, "-m", "absync", *args],
        env=environment,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
