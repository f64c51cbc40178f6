"""`egress-router dns-proxy`: a forwarder per destination line, names followed, list file followed, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

from egress_router.config.dns_settings import DnsProxySettings, check_metrics_port
from egress_router.config.dns_targets import Target, parse_targets
from egress_router.config.resolv_conf import parse_resolv_conf
from egress_router.dns_proxy import metrics
from egress_router.dns_proxy.forwarder import Forwarder
from egress_router.dns_proxy.names import FollowedName
from egress_router.dns_proxy.resolver import Resolver
from egress_router.errors import ApplyError
from egress_router.observe.endpoints import local_probes, serving
from egress_router.observe.stats import CONFIG_RELOADS, Stats, count
from egress_router.runtime.egress_families import EgressFamilies
from egress_router.runtime.sockets import check_free, listen
from egress_router.runtime.watch import ListFile, SerialApply, following
from egress_router.runtime.workers import linger, run_loop

log = logging.getLogger(__name__)
RESOLV_CONF = "/etc/resolv.conf"


class ForwardedPorts:
    """The listening ports and where each one goes; `apply` turns one list into another without a restart."""

    def __init__(self, settings: DnsProxySettings, resolver: Resolver) -> None:
        self.settings = settings
        self.resolver = resolver
        self.families = EgressFamilies()  # AAAA records asked for, and which families are connected to
        self.active: set[asyncio.Task[None]] = set()
        self.ports: dict[int, tuple[asyncio.Server, Forwarder]] = {}
        self.missing: set[int] = set()  # ports of the list that could not be had (readiness says which)
        self.stopping = False
        self.stats = Stats(metrics.METRICS)
        self.lookups = self.stats.counter(metrics.LOOKUPS)
        self.stats.computed(metrics.OPEN, lambda: {(str(port),): fw.open for port, (_, fw) in self.ports.items()})
        self.stats.computed(metrics.ANSWER_AGE, self.answer_ages)
        self.stats.computed(metrics.STALE, lambda: {(name.target.host,): float(name.stale) for name in self.names()})

    def names(self) -> list[FollowedName]:
        return [fw.destination for _, fw in self.ports.values() if fw.destination.target.address is None]

    def answer_ages(self) -> dict[tuple[str, ...], float]:
        now = asyncio.get_running_loop().time()
        return {(name.target.host,): now - name.answered_at for name in self.names() if name.answered_at is not None}

    def ready(self) -> str | None:
        if self.stopping:
            return "draining: stopping on SIGTERM"
        if self.missing:
            return f"port(s) {', '.join(map(str, sorted(self.missing)))} of EGRESS_DNS_PROXY_DESTINATION not listening"
        return None

    async def apply(self, targets: tuple[Target, ...]) -> None:
        loop = asyncio.get_running_loop()
        wanted = {target.local_port: target for target in targets}
        self.missing &= set(wanted)
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
            destination = FollowedName(target, self.settings, self.resolver, self.families.sends_ipv6, self.lookups, self.families)
            if current is not None:
                current[1].destination.stop()
                current[1].destination = destination  # new connections go to the new destination
            else:
                try:
                    sock = listen(port, reuse_port=False)
                except ApplyError as error:
                    log.error("EGRESS_DNS_PROXY_DESTINATION line %d: %s", target.line_no, error)
                    self.missing.add(port)
                    continue
                self.missing.discard(port)
                forwarder = Forwarder(destination, self.settings, self.active, self.stats)
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
    reloaded = forwarded.stats.counter(CONFIG_RELOADS.name)

    def parse(text: str) -> tuple[Target, ...]:
        return check_metrics_port(parse_targets(text), settings.metrics_port)

    def use(targets: tuple[Target, ...]) -> None:
        forwarded.settings = replace(forwarded.settings, targets=targets)
        reloads.submit(targets)

    async with serving(settings.metrics_port, local_probes("dns-proxy", forwarded.stats, forwarded.ready)):
        with following(list_file, "EGRESS_DNS_PROXY_DESTINATION_FILE", parse, use, lambda result: count(reloaded, result)):
            await stop.wait()
            forwarded.stopping = True
            await linger(stop, settings.shutdown_delay)
        await reloads.settle()
        forwarded.stop()
        await drain(forwarded)


async def drain(forwarded: ForwardedPorts) -> None:
    settings = forwarded.settings
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
    ports = [target.local_port for target in settings.targets]
    for port in [*ports, settings.metrics_port] if settings.metrics_port is not None else ports:  # every port ours before we start
        check_free(port)
    run_loop(lambda stop: serve_until_stopped(settings, stop, list_file))
    return 0
