"""``absync run`` with the web server and other components: the web server runs in a process of its
own, stops with the service, and its death stops the service with a non-zero exit (issue 19)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from streams.settings import Settings
from tests.cli_helpers import cli_env
from tests.web.conftest import free_port, wait_for_leaders

REPO_ROOT = Path(__file__).resolve().parents[2]


def children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid``: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_service(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    wait_for_leaders(settings)
    command = [sys.executable, "-m", "absync", "run", "--only", "projection", "--only", "http"]
    env = cli_env(settings, ABSYNC_HTTP_PORT=str(port))
    return subprocess.Popen([*command, "--no-create-topics"], env=env, cwd=REPO_ROOT)


def web_child(service: subprocess.Popen[bytes], port: int) -> int:
    """Waits (bounded) until the API answers; the pid of the child process serving it."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        for _ in range(1200):  # start-up on a loaded machine: up to two minutes
            if service.poll() is not None:
                pytest.fail(f"the service exited with {service.returncode}")
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("the API did not start")
    [web] = [pid for pid, cmd in children(service.pid).items() if "multiprocessing.spawn" in cmd]
    return web


def test_the_web_server_runs_apart_and_stops_with_the_service(settings: Settings) -> None:
    port = free_port()
    service = start_service(settings, port)
    try:
        web = web_child(service, port)
        assert web != service.pid
        service.send_signal(signal.SIGTERM)
        assert service.wait(60) == 0
        assert not alive(web), "the web server outlived the service"
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(30)


def test_the_service_stops_non_zero_when_its_web_server_dies(settings: Settings) -> None:
    port = free_port()
    service = start_service(settings, port)
    try:
        web = web_child(service, port)
        os.kill(web, signal.SIGKILL)
        assert service.wait(60) != 0  # the supervisor restarts the whole service
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(30)


def test_the_web_server_stops_when_the_service_is_killed(settings: Settings) -> None:
    """No orphan: a service killed outright (no chance to stop its child) takes the web server along."""
    port = free_port()
    service = start_service(settings, port)
    try:
        web = web_child(service, port)
        service.send_signal(signal.SIGKILL)
        service.wait(30)
        for _ in range(300):  # bounded: it notices within a second, stops within its grace period
            if not alive(web):
                break
            time.sleep(0.1)
        assert not alive(web), "the web server outlived its killed parent"
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(30)
