"""`egress-router http-proxy`: listen, serve, and drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import replace

from egress_router.config.http_acl import Acl, parse_acl
from egress_router.config.http_settings import HttpProxySettings
from egress_router.http_proxy.access_log import AccessLog
from egress_router.http_proxy.server import Proxy
from egress_router.runtime.sockets import listen
from egress_router.runtime.watch import ListFile, following
from egress_router.runtime.workers import run_loop, run_workers

log = logging.getLogger(__name__)


async def serve_until_stopped(settings: HttpProxySettings, sock: socket.socket, stop: asyncio.Event, acl_file: ListFile | None) -> None:
    loop = asyncio.get_running_loop()
    proxy = Proxy(loop, settings, AccessLog())
    server = await loop.create_server(proxy.protocol, sock=sock, backlog=1024)

    def use(acl: Acl) -> None:
        proxy.settings = replace(proxy.settings, acl=acl)

    with following(acl_file, "EGRESS_HTTP_PROXY_DESTINATION_FILE", parse_acl, use):
        await stop.wait()
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

    def worker() -> None:
        sock = first if not reuse else listen(settings.listen_port, reuse_port=True)
        run_loop(lambda stop: serve_until_stopped(settings, sock, stop, acl_file))

    return run_workers(settings.workers, worker, settings.drain_timeout)
