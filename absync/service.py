"""The service runner behind ``absync run``: starts every component and stops them all cleanly.

A component is built by a factory ``build(settings) -> Component`` named in :data:`COMPONENTS`
("module:function"); it runs until the ``stop`` event is set, then returns. A blocking component
(a confluent-kafka loop) runs its loop in a thread of its own (:func:`streams.threads.run_in_thread`,
never asyncio's default executor, which stays free for short calls) and watches ``stop``. Connectors'
blocking client libraries run on threads of their destination (:mod:`connectors.executor`).
"""

from __future__ import annotations

import asyncio
import importlib
import signal
from collections.abc import Callable
from typing import Protocol

import structlog

from streams.settings import Settings

log = structlog.get_logger(__name__)


class Component(Protocol):
    name: str

    async def run(self, stop: asyncio.Event) -> None: ...


# Order matters only for start-up logs. Each part can run alone: ``absync run --only NAME``.
COMPONENTS: dict[str, str] = {
    "fanout": "processors.fanout:build",
    "delivery": "processors.delivery:build",
    "projection": "projections.runner:build",
    "slack": "processors.slack_scheduler:build",
    "health": "absync.health.monitor:build",
    "http": "absync.web.server:build",
}


OWN_PROCESS: dict[str, str] = {"http": "absync.web.process:build"}
"""Components run in a child process when the service runs more than one component: the web server
(API and live console) then never competes with the pipeline for this process's GIL
(:mod:`absync.web.process`). Alone (``--only http``, as on Kubernetes), it serves in-process."""


def load_factory(name: str, *, own_process: bool = False) -> Callable[[Settings], Component]:
    """The factory of component ``name`` (of its child-process wrapper if ``own_process`` and it has
    one). A module that fails to import stops the service with that error: a service that starts
    without one of its parts, and says nothing, is worse than none."""
    target = OWN_PROCESS.get(name, COMPONENTS[name]) if own_process else COMPONENTS[name]
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    factory: Callable[[Settings], Component] = getattr(module, attr)
    return factory


async def run_components(settings: Settings, only: list[str] | None = None) -> None:
    names = only or list(COMPONENTS)
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise SystemExit(f"unknown component(s): {', '.join(unknown)}; known: {', '.join(COMPONENTS)}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Every import first: fail before any start. The web server alone serves here; with others, apart.
    factories = [load_factory(name, own_process=len(names) > 1) for name in names]
    components = [factory(settings) for factory in factories]
    log.info("absync starting", components=[c.name for c in components])
    tasks = {asyncio.create_task(c.run(stop), name=c.name): c for c in components}
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    failed = [t for t in done if t is not stopper and t.exception() is not None]
    for task in failed:
        log.error("component failed", component=task.get_name(), error=repr(task.exception()))
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
    log.info("absync stopped")
    if failed:
        raise SystemExit(1)
