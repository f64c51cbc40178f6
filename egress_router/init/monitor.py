"""`egress-router monitor`: the redirect pod's long-running container.

It keeps what `init` set up true: it announces the egress address again (the init container may exit
before its second gratuitous ARP), re-applies the NAT rules when EGRESS_DESTINATION_FILE changes
(a bad new list is logged and ignored), and puts back the NAT rules, the reply marks, the mark rule,
eth0's reply table and the routes kept on eth0 if anything removed them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address

from egress_router.config.destinations import Destinations, parse_destinations
from egress_router.config.init_settings import InitSettings, Mode
from egress_router.errors import ApplyError
from egress_router.init import arp, metrics
from egress_router.init.apply import ClusterSide, decide_cluster_side, keep_cluster_side
from egress_router.init.journal import Journal
from egress_router.init.nat_backend import Backend
from egress_router.init.netlink import PodNetwork, PolicyRouting
from egress_router.init.plan import ChainSet, NetworkPlan, build_plan, labelled_nat_rules
from egress_router.observe.endpoints import local_probes, serving
from egress_router.observe.stats import CONFIG_RELOADS, Counter, Stats, count
from egress_router.runtime.watch import ListFile, following
from egress_router.runtime.workers import run_loop

log = logging.getLogger(__name__)


class Keeper:
    """Puts the plan's policy routing and rules back; what eth0 keeps is read once, while init's setup is intact.

    Each pass also leaves what the endpoints report: why the pod is not ready (None when it is) and the
    NAT rules' counters. Passes run in a thread (pyroute2 and python-iptables block); the loop only reads.
    """

    def __init__(self, settings: InitSettings, plan: NetworkPlan, backend: Backend) -> None:
        self.settings = settings
        self.plan = plan
        self.backend = backend
        self.side: ClusterSide | None = None
        self.reason = "installed (they were missing or different)"  # what the next pass's repairs are called
        self.problem: str | None = "not checked yet"
        self.address_present = False
        self.nat_counters: dict[tuple[str, ...], tuple[int, int]] = {}
        self.stats = Stats(metrics.METRICS)
        self.restores = self.stats.counter(metrics.RESTORES)
        self.announced_at: float | None = None
        self.stats.computed(metrics.ADDRESS, lambda: {(): float(self.address_present)})
        self.stats.computed(metrics.ARP, lambda: {(): self.announced_at} if self.announced_at is not None else {})
        self.stats.computed(metrics.NAT_PACKETS, lambda: {rule: float(c[0]) for rule, c in self.nat_counters.items()})
        self.stats.computed(metrics.NAT_BYTES, lambda: {rule: float(c[1]) for rule, c in self.nat_counters.items()})

    def announce(self) -> None:
        if arp.announce_now_and_later(self.settings.interface, self.settings.source.ip):
            self.announced_at = time.time()

    def apply(self, reason: str) -> None:
        net = PodNetwork(Journal())  # nothing is rolled back here: every step that lands is a repair
        try:
            self.check_address(net)
            routing = PolicyRouting(net)
            if self.side is None:
                self.side = decide_cluster_side(routing, self.plan)
            self.repaired("reply-routing", keep_cluster_side(routing, self.side, reread=True), f"reply routing {reason}")
            self.repaired("reply-marks", self.backend.install(self.plan.marks), f"reply marks {reason}")
            if self.plan.nat is not None:
                self.repaired("nat", self.backend.install(self.plan.nat), f"NAT rules {reason}")
                self.read_counters(self.plan.nat)
        except ApplyError as error:
            log.error("%s", error)
            self.problem = str(error)
        finally:
            net.close()

    def check_address(self, net: PodNetwork) -> None:
        name, address = self.settings.interface, self.settings.source.ip
        index = net.link_index(name)
        self.address_present = index is not None and any(a.ip == address for a in net.ipv4_addresses(index))
        self.problem = None if self.address_present else f"{address} is not on {name} (run init again)"

    def repaired(self, what: str, changed: bool, message: str) -> None:
        if changed:
            log.info("%s", message)
            count(self.restores, what)

    def read_counters(self, chains: ChainSet) -> None:
        found = self.backend.counters(chains)
        if found is not None:
            labels = [label for _, label in labelled_nat_rules(self.settings)]
            self.nat_counters = {(label,): counts for label, counts in zip(labels, found, strict=True)}

    def ready(self) -> str | None:
        return self.problem


async def watch_until_stopped(
    settings: InitSettings,
    nameservers: tuple[IPv4Address, ...],
    list_file: ListFile | None,
    interval: float,
    backend: Backend,
    stop: asyncio.Event,
) -> None:
    keeper = Keeper(settings, build_plan(settings, nameservers), backend)
    keeper.announce()
    wake = asyncio.Event()
    reloads = keeper.stats.counter(CONFIG_RELOADS.name)

    def use(destinations: Destinations) -> None:
        keeper.settings = replace(keeper.settings, destinations=destinations)
        keeper.plan = build_plan(keeper.settings, nameservers)
        keeper.reason = "replaced from the new list"
        wake.set()

    log.info("watching %s every %g s%s", settings.interface, interval, f" and {list_file.path}" if list_file else "")
    probes = local_probes(settings.mode.value if settings.mode is Mode.LEGACY else "monitor", keeper.stats, keeper.ready)
    async with serving(settings.metrics_port, probes):
        await keep(keeper, stop, wake, interval, list_file, use, reloads)
    log.info("stopped")


async def keep(
    keeper: Keeper,
    stop: asyncio.Event,
    wake: asyncio.Event,
    interval: float,
    list_file: ListFile | None,
    use: Callable[[Destinations], None],
    reloads: Counter,
) -> None:
    with following(list_file, "EGRESS_DESTINATION_FILE", parse_destinations, use, lambda result: count(reloads, result)):
        while not stop.is_set():
            wake.clear()
            # pyroute2's synchronous API runs an event loop of its own: in a thread, not inside ours
            await asyncio.to_thread(keeper.apply, keeper.reason)
            keeper.reason = "restored (something had changed them)"
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
            await asyncio.wait(waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()


def run(settings: InitSettings, nameservers: tuple[IPv4Address, ...], list_file: ListFile | None, interval: float, backend: Backend) -> int:
    run_loop(lambda stop: watch_until_stopped(settings, nameservers, list_file, interval, backend, stop))
    return 0
