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
from functools import partial

from egress_router.config.addresses import IPAddress
from egress_router.config.destinations import Destinations
from egress_router.config.init_settings import InitSettings, Mode, destinations_for
from egress_router.errors import ApplyError
from egress_router.init import arp, metrics, nat
from egress_router.init.apply import ClusterSide, decide_cluster_side, keep_cluster_side
from egress_router.init.journal import Journal
from egress_router.init.netlink import PodNetwork, PolicyRouting
from egress_router.init.plan import NetworkPlan, build_plan, labelled_nat_rules
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

    def __init__(self, settings: InitSettings, plan: NetworkPlan) -> None:
        self.settings = settings
        self.plan = plan
        self.side: tuple[ClusterSide, ...] | None = None
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
        if arp.announce_now_and_later(self.settings.interface, tuple(s.ip for s in self.settings.sources.values())):
            self.announced_at = time.time()

    def apply(self, reason: str) -> None:
        net = PodNetwork(Journal())  # nothing is rolled back here: every step that lands is a repair
        try:
            self.check_address(net)
            routing = PolicyRouting(net)
            if self.side is None:
                self.side = decide_cluster_side(routing, self.plan)
            self.repaired("reply-routing", keep_cluster_side(routing, self.side, reread=True), f"reply routing {reason}")
            for family in self.plan.families:
                self.repaired("reply-marks", nat.apply_chains(family.marks), f"reply marks {reason}")
            for family in self.plan.families:
                if family.nat is not None:
                    self.repaired("nat", nat.apply_chains(family.nat), f"NAT rules {reason}")
            self.read_counters()
        except ApplyError as error:
            log.error("%s", error)
            self.problem = str(error)
        finally:
            net.close()

    def check_address(self, net: PodNetwork) -> None:
        name = self.settings.interface
        index = net.link_index(name)
        missing = [
            s.ip for s in self.settings.sources.values() if index is None or all(a.ip != s.ip for a in net.addresses(index, s.family))
        ]
        self.address_present = not missing
        verb = "is" if len(missing) == 1 else "are"
        self.problem = f"{' and '.join(map(str, missing))} {verb} not on {name} (run init again)" if missing else None

    def repaired(self, what: str, changed: bool, message: str) -> None:
        if changed:
            log.info("%s", message)
            count(self.restores, what)

    def read_counters(self) -> None:
        """Each rule's packets and bytes by its label; `snat` and `metrics-port` add up both families' rules."""
        totals: dict[tuple[str, ...], tuple[int, int]] = {}
        for family in self.plan.families:
            found = nat.counters(family.nat) if family.nat is not None else None
            if found is None:
                continue
            labels = [label for _, label in labelled_nat_rules(self.settings, family.family)]
            for label, (packets, size) in zip(labels, found, strict=True):
                before = totals.get((label,), (0, 0))
                totals[(label,)] = (before[0] + packets, before[1] + size)
        if totals:
            self.nat_counters = totals

    def ready(self) -> str | None:
        return self.problem


async def watch_until_stopped(
    settings: InitSettings, nameservers: tuple[IPAddress, ...], list_file: ListFile | None, interval: float, stop: asyncio.Event
) -> None:
    keeper = Keeper(settings, build_plan(settings, nameservers))
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
    parse = partial(destinations_for, sources=keeper.settings.sources)  # an IPv6 line on an IPv4-only router is an error
    with following(list_file, "EGRESS_DESTINATION_FILE", parse, use, lambda result: count(reloads, result)):
        while not stop.is_set():
            wake.clear()
            # pyroute2's synchronous API runs an event loop of its own: in a thread, not inside ours
            await asyncio.to_thread(keeper.apply, keeper.reason)
            keeper.reason = "restored (something had changed them)"
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
            await asyncio.wait(waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()


def run(settings: InitSettings, nameservers: tuple[IPAddress, ...], list_file: ListFile | None, interval: float) -> int:
    run_loop(lambda stop: watch_until_stopped(settings, nameservers, list_file, interval, stop))
    return 0
