"""`egress-router dns-proxy`: a listener per destination line, names followed, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from egress_router.config.dns_settings import DnsProxySettings
from egress_router.config.resolv_conf import parse_resolv_conf
from egress_router.dns_proxy.names import Destination
from egress_router.dns_proxy.relay_server import Listener
from egress_router.listener import listen
from egress_router.resolver import Resolver
from egress_router.workers import run_loop

log = logging.getLogger(__name__)
RESOLV_CONF = "/etc/resolv.conf"


async def serve_until_stopped(settings: DnsProxySettings, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    try:
        resolv = parse_resolv_conf(Path(RESOLV_CONF).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        resolv = parse_resolv_conf("")
    resolver = Resolver(resolv)
    active: set[asyncio.Task[None]] = set()
    servers = []
    destinations = []
    for target in settings.targets:
        destination = Destination(target, settings, resolver)
        destinations.append(destination)
        sock = listen(target.local_port, reuse_port=False)
        servers.append(await loop.create_server(Listener(destination, settings, active).protocol, sock=sock))
        destination.start()
        log.info("port %d -> %s", target.local_port, target.describe)
    await stop.wait()
    for server in servers:
        server.close()
    for destination in destinations:
        destination.stop()
    log.info("stopping: no new connections; %d relayed connection(s) get up to %g s", len(active), settings.drain_timeout)
    if active:
        _done, pending = await asyncio.wait(set(active), timeout=settings.drain_timeout)
        for task in pending:
            task.cancel()
    log.info("stopped")


def run(settings: DnsProxySettings) -> int:
    for target in settings.targets:  # every port must be ours before anything starts
        listen(target.local_port, reuse_port=False).close()
    run_loop(lambda stop: serve_until_stopped(settings, stop))
    return 0
