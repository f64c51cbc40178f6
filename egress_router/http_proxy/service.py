"""`egress-router http-proxy`: listen, serve, and drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import replace

from egress_router.config.http_acl import Acl, parse_acl
from egress_router.config.http_settings import HttpProxySettings
from egress_router.http_proxy.access_log import AccessLog
from egress_router.http_proxy.metrics import METRICS
from egress_router.http_proxy.server import Proxy
from egress_router.observe.endpoints import local_probes, serving
from egress_router.observe.reports import SupervisorEndpoints, report_forever, send_report
from egress_router.observe.stats import CONFIG_RELOADS, by_name, count
from egress_router.runtime.egress_families import EgressFamilies
from egress_router.runtime.sockets import check_free, listen
from egress_router.runtime.watch import ListFile, following
from egress_router.runtime.workers import linger, run_loop, run_workers

log = logging.getLogger(__name__)


async def serve_until_stopped(
    settings: HttpProxySettings, sock: socket.socket, stop: asyncio.Event, acl_file: ListFile | None, reports: socket.socket | None
) -> None:
    """One worker. Its endpoints: on this loop when it is the only worker, else its reports to the supervisor (which
    then also waits out the shutdown delay before it passes SIGTERM on: here it is the only one's to wait)."""
    loop = asyncio.get_running_loop()
    proxy = Proxy(loop, settings, AccessLog(), families=EgressFamilies())
    server = await loop.create_server(proxy.protocol, sock=sock, backlog=1024)
    stopping = asyncio.Event()

    def ready() -> str | None:
        return "draining: stopping on SIGTERM" if stopping.is_set() else None

    def use(acl: Acl) -> None:
        proxy.settings = replace(proxy.settings, acl=acl)

    reloads = proxy.stats.counter(CONFIG_RELOADS.name)
    local = settings.metrics_port if reports is None else None
    reporter = loop.create_task(report_forever(reports, proxy.stats, ready)) if reports is not None else None
    async with serving(local, local_probes("http-proxy", proxy.stats, ready)):
        with following(acl_file, "EGRESS_HTTP_PROXY_DESTINATION_FILE", parse_acl, use, lambda result: count(reloads, result)):
            await stop.wait()
            stopping.set()
            await linger(stop, settings.shutdown_delay if reports is None else 0.0)
        await drain(proxy, server)
    if reporter is not None and reports is not None:
        reporter.cancel()
        send_report(reports, proxy.stats, ready)  # the last second's counts too


async def drain(proxy: Proxy, server: asyncio.Server) -> None:
    loop, settings = proxy.loop, proxy.settings
    server.close()
    in_flight = len(proxy.connections)
    log.info("stopping: no new connections; draining %d for up to %g s", in_flight, settings.drain_timeout)
    proxy.drain()
    deadline = loop.time() + settings.drain_timeout
    while proxy.connections and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for connection in list(proxy.connections):
        if connection.transport is not None:
            connection.transport.abort()
    proxy.pool.close()
    proxy.access_log.flush()
    log.info("stopped (%d connection(s) cut at the drain deadline)", len(proxy.connections))


def run(settings: HttpProxySettings, acl_file: ListFile | None = None) -> int:
    """Serve until SIGTERM; with `acl_file`, each worker follows changes to the list in that file."""
    reuse = settings.workers > 1
    # One worker listens on this socket; several each open their own in an SO_REUSEPORT group, so here
    # the port is only bound (not listening) to fail early and clearly if it cannot be had.
    first = listen(settings.listen_port, reuse_port=reuse, backlog=None if reuse else 1024)
    log.info(
        "listening on port %d (IPv4 and IPv6), %d worker(s), CONNECT to port(s) %s",
        settings.listen_port,
        settings.workers,
        ",".join(str(p) for p in sorted(settings.connect_ports)),
    )
    if reuse:
        first.close()

    supervisor = None
    if reuse and settings.metrics_port is not None:
        supervisor = SupervisorEndpoints(settings.metrics_port, "http-proxy", by_name(METRICS), settings.workers)
    elif settings.metrics_port is not None:
        check_free(settings.metrics_port)
    reports = supervisor.reports.sender if supervisor is not None else None

    def worker() -> None:
        sock = first if not reuse else listen(settings.listen_port, reuse_port=True)
        run_loop(lambda stop: serve_until_stopped(settings, sock, stop, acl_file, reports))

    return run_workers(settings.workers, worker, settings.drain_timeout, watcher=supervisor, delay=settings.shutdown_delay)
