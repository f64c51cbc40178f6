"""GET /healthz, /readyz and /metrics on EGRESS_METRICS_PORT, every address of the pod (IPv4 and IPv6).

Probes answer 200 `ok`, or 503 with the one-line reason the process is not live or not ready. They run
on the event loop of the process they describe (so an answer also shows that loop is responsive), or,
for a supervisor of several workers, in a process of their own beside the workers (observe/reports.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from aiohttp import web

from egress_router.config.options import METRICS_PORT
from egress_router.errors import ApplyError
from egress_router.observe.exposition import CONTENT_TYPE, SnapshotCollector, registry_of, render
from egress_router.observe.stats import Stats, merge
from egress_router.runtime.sockets import check_free, listen

log = logging.getLogger(__name__)

#: None when all is well, else why not: one line for the probe's answer and the kubelet's event.
Check = Callable[[], str | None]


@dataclass(frozen=True)
class Probes:
    health: Check
    ready: Check
    metrics: Callable[[], bytes]


def _answer(check: Check) -> web.Response:
    try:
        reason = check()
    except Exception as error:  # noqa: BLE001 - a probe that fails says so, it does not take the server down
        reason = f"the check itself failed: {type(error).__name__}: {error}"
    if reason is None:
        return web.Response(text="ok\n")
    return web.Response(status=503, text=reason + "\n")


def application(probes: Probes) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        return _answer(probes.health)

    async def readyz(_request: web.Request) -> web.Response:
        return _answer(probes.ready)

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=probes.metrics(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


@contextlib.contextmanager
def _naming_the_variable() -> Iterator[None]:
    """A port that cannot be had is the user's setting: say which variable it came from."""
    try:
        yield
    except ApplyError as error:
        raise ApplyError(f"{METRICS_PORT.variable}: {error}") from error


def check_port(port: int) -> None:
    """Fail now (ApplyError naming EGRESS_METRICS_PORT) if the port is taken: before the caller changes or starts anything."""
    with _naming_the_variable():
        check_free(port)


async def start(port: int, probes: Probes) -> web.AppRunner:
    """Serve on the running loop until the returned runner is cleaned up."""
    with _naming_the_variable():
        sock = listen(port, reuse_port=False, backlog=64)
    runner = web.AppRunner(application(probes), access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    log.info("health, readiness and metrics on port %d (/healthz, /readyz, /metrics)", port)
    return runner


def serve_forever(port: int, probes: Probes, setup: Callable[[asyncio.AbstractEventLoop], None] | None = None) -> None:
    """Serve on a loop of its own until `setup`'s code stops it: for a process that does nothing else (a supervisor's
    endpoints). `setup` runs first on that loop (to add readers of its own)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        if setup is not None:
            setup(loop)
        runner = loop.run_until_complete(start(port, probes))
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
    finally:
        loop.close()


@contextlib.asynccontextmanager
async def serving(port: int | None, probes: Probes) -> AsyncIterator[None]:
    """The endpoints on this loop while the block runs (through a drain, so /readyz can say so); port None: none."""
    if port is None:
        yield
        return
    runner = await start(port, probes)
    try:
        yield
    finally:
        await runner.cleanup()


def local_probes(mode: str, stats: Stats, ready: Check) -> Probes:
    """Endpoints of a single process: live while its loop answers, ready as `ready` says, its own metrics."""
    registry = registry_of(SnapshotCollector(mode, stats.metrics, lambda: merge([stats.snapshot()])))
    return Probes(lambda: None, ready, lambda: render(registry))
