"""`egress-router dns-proxy`: a forwarder per destination line, names followed, list file followed, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

from egress_router.config.dns_settings import DnsProxySettings
from egress_router.config.dns_targets import Target, parse_targets
from egress_router.config.resolv_conf import parse_resolv_conf
from egress_router.dns_proxy.forwarder import Forwarder
from egress_router.dns_proxy.names import FollowedName
from egress_router.dns_proxy.resolver import Resolver, can_send_ipv6
from egress_router.errors import ApplyError
from egress_router.runtime.sockets import listen
from egress_router.runtime.watch import ListFile, SerialApply, following
from egress_router.runtime.workers import run_loop

log = logging.getLogger(__name__)
RESOLV_CONF = "/etc/resolv.conf"


class ForwardedPorts:
    """The listening ports and where each one goes; `apply` turns one list into another without a restart."""

    def __init__(self, settings: DnsProxySettings, resolver: Resolver) -> None:
        self.settings = settings
        self.resolver = resolver
        self.ipv6 = can_send_ipv6()
        self.active: set[asyncio.Task[None]] = set()
        self.ports: dict[int, tuple[asyncio.Server, Forwarder]] = {}

    async def apply(self, targets: tuple[Target, ...]) -> None:
        loop = asyncio.get_running_loop()
        wanted = {target.local_port: target for target in targets}
        for port in [p for p in self.ports if p not in wanted]:
            server, forwarder = self.ports.pop(port)
            server.close()  # open connections on it run on
            forwarder.destination.stop()
            log.info("port %d closed", port)
        for port, target in wanted.items():
            current = self.ports.get(port)
            if current is not None and (current[1].destination.target.host, current[1].destination.target.remote_port) == (
                target.host,
                target.remote_port,
            ):
                continue
            destination = FollowedName(target, self.settings, self.resolver, self.ipv6)
            if current is not None:
                current[1].destination.stop()
                current[1].destination = destination  # new connections go to the new destination
            else:
                try:
                    sock = listen(port, reuse_port=False)
                except ApplyError as error:
                    log.error("EGRESS_DNS_PROXY_DESTINATION line %d: %s", target.line_no, error)
                    continue
                forwarder = Forwarder(destination, self.settings, self.active)
                self.ports[port] = (await loop.create_server(forwarder.protocol, sock=sock), forwarder)
            destination.start()
            log.info("port %d -> %s", port, target.describe)

    def stop(self) -> None:
        for server, forwarder in self.ports.values():
            server.close()
            forwarder.destination.stop()


async def serve_until_stopped(settings: DnsProxySettings, stop: asyncio.Event, list_file: ListFile | None) -> None:
    try:
        resolv = parse_resolv_conf(Path(RESOLV_CONF).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        resolv = parse_resolv_conf("")
    forwarded = ForwardedPorts(settings, Resolver(resolv))
    await forwarded.apply(settings.targets)
    reloads = SerialApply("EGRESS_DNS_PROXY_DESTINATION_FILE", forwarded.apply)

    def use(targets: tuple[Target, ...]) -> None:
        forwarded.settings = replace(forwarded.settings, targets=targets)
        reloads.submit(targets)

    with following(list_file, "EGRESS_DNS_PROXY_DESTINATION_FILE", parse_targets, use):
        await stop.wait()
    await reloads.settle()
    forwarded.stop()
    log.info("stopping: no new connections; %d relayed connection(s) get up to %g s", len(forwarded.active), settings.drain_timeout)
    cut = 0
    if forwarded.active:
        _done, pending = await asyncio.wait(set(forwarded.active), timeout=settings.drain_timeout)
        cut = len(pending)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1)
    log.info("stopped (%d connection(s) cut at the drain deadline)", cut)


def run(settings: DnsProxySettings, list_file: ListFile | None = None) -> int:
    for target in settings.targets:  # every port must be ours before anything starts
        listen(target.local_port, reuse_port=False, backlog=None).close()
    run_loop(lambda stop: serve_until_stopped(settings, stop, list_file))
    return 0
