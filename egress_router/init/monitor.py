"""`egress-router monitor`: the redirect pod's long-running container.

It keeps what `init` set up true: it announces the egress address again (the init container may exit
before its second gratuitous ARP), re-applies the NAT rules when EGRESS_DESTINATION_FILE changes
(a bad new list is logged and ignored), and puts back the NAT rules, the reply marks, the mark rule,
eth0's reply table and the routes kept on eth0 if anything removed them. While another host claims the
egress address (IPv4 or IPv6), it is not ready (arp_claims.AddressGuard).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from egress_router.config.addresses import IPAddress
from egress_router.config.destinations import Destinations
from egress_router.config.init_settings import InitSettings, Mode, check_metrics_port, destinations_for
from egress_router.errors import ApplyError
from egress_router.init import arp, metrics
from egress_router.init.apply import ClusterSide, decide_cluster_side, keep_cluster_side
from egress_router.init.arp_claims import AddressGuard
from egress_router.init.conflicts import ANSWER_TIME
from egress_router.init.journal import Journal
from egress_router.init.nat_backend import Backend
from egress_router.init.netlink import PodNetwork, PolicyRouting
from egress_router.init.plan import NetworkPlan, build_plan, labelled_nat_rules
from egress_router.observe.endpoints import local_probes, serving
from egress_router.observe.stats import CONFIG_RELOADS, Stats, count
from egress_router.runtime.watch import ListFile, following
from egress_router.runtime.workers import linger, run_loop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """What the monitor keeps in place: settings and the plan made from them, always replaced together."""

    settings: InitSettings
    plan: NetworkPlan


#: What a pass calls the changes it had to make, by how it came to make them.
FIRST = "installed: what init left differed (give the init container this monitor's variables, EGRESS_METRICS_PORT too)"
REPLACED = "replaced from the new list"
RESTORED = "restored (something had changed them)"


class Keeper:
    """Puts the plan's policy routing and rules back; what eth0 keeps is read once, while init's setup is intact.

    Each pass also leaves what the endpoints report: why the pod is not ready (None when it is) and the
    NAT rules' counters. Passes run in a thread (pyroute2 and python-iptables block) while the loop may hand
    over a new list (use()): a pass reads `target` once and keeps to what it read; the loop only reads the rest.
    """

    def __init__(self, settings: InitSettings, plan: NetworkPlan, backend: Backend, stop: asyncio.Event | None = None) -> None:
        self.target = Target(settings, plan)
        self.kept: Target | None = None  # what the last complete pass put in place
        self.backend = backend
        self.side: tuple[ClusterSide, ...] | None = None
        self.problem: str | None = "not checked yet"
        self.stop = stop or asyncio.Event()  # set on SIGTERM: unready at once, even while a pass is under way
        self.stopping = False  # and for good once the watch ended (linger clears `stop` to wait for a second signal)
        self.address_present = False
        self.nat_counters: dict[tuple[str, ...], tuple[int, int]] = {}
        self.stats = Stats(metrics.METRICS)
        self.restores = self.stats.counter(metrics.RESTORES)
        self.announced_at: float | None = None
        self.started = False  # the first check_claims opened the watch and scheduled the announcements
        self.stats.computed(metrics.ADDRESS, lambda: {(): float(self.address_present)})
        self.stats.computed(metrics.ARP, lambda: {(): self.announced_at} if self.announced_at is not None else {})
        self.stats.computed(metrics.NAT_PACKETS, lambda: {rule: float(c[0]) for rule, c in self.nat_counters.items()})
        self.stats.computed(metrics.NAT_BYTES, lambda: {rule: float(c[1]) for rule, c in self.nat_counters.items()})
        # one watch per family (both share the conflict metrics: one conflict of either family is one conflict)
        self.guards = tuple(AddressGuard(settings.interface, source.ip, self.stats) for source in settings.sources.values())
        self.stats.computed(metrics.CONFLICT, lambda: {(): float(any(guard.reason() is not None for guard in self.guards))})

    def announce(self) -> None:
        """The start's announcements (the init container's second one may have died with it): only while no other
        host claims the address, as announcing against a holder would flip the LAN's caches back and forth."""
        settings = self.target.settings
        claimed = [reason for guard in self.guards if (reason := guard.reason()) is not None]
        if claimed:
            log.warning("not announcing the egress address on %s: %s", settings.interface, "; ".join(claimed))
            return
        if arp.announce_all(settings.interface, tuple(s.ip for s in settings.sources.values())):
            self.announced_at = time.time()

    def use(self, destinations: Destinations) -> None:
        """A new list (on the loop): the next pass replaces the NAT rules; one running now finishes with the old."""
        settings = replace(self.target.settings, destinations=destinations)
        self.target = Target(settings, build_plan(settings, self.target.plan.nameservers))

    def apply(self) -> None:
        """One pass (in a thread). Whatever fails becomes the readiness reason; the next pass tries again."""
        target = self.target
        reason = FIRST if self.kept is None else RESTORED if target is self.kept else REPLACED
        net = None
        try:
            net = PodNetwork(Journal())  # nothing is rolled back here: every step that lands is a repair
            missing = self.check_address(net, target.settings)
            routing = PolicyRouting(net)
            if self.side is None:
                self.side = decide_cluster_side(routing, target.plan)
            self.repaired("reply-routing", keep_cluster_side(routing, self.side, reread=True), "reply routing", reason)
            for family in target.plan.families:
                self.repaired("reply-marks", self.backend.install(family.marks), "reply marks", reason)
            for family in target.plan.families:
                if family.nat is not None:
                    self.repaired("nat", self.backend.install(family.nat), "NAT rules", reason)
            self.read_counters(target)
            self.kept = target
            self.problem = missing  # ready only once a whole pass has put everything in place
        except ApplyError as error:
            log.error("%s", error)
            self.problem = str(error)
        except Exception as error:  # a pass that fails is reported and retried, never a dead monitor
            log.error("checking the setup failed: %s: %s", type(error).__name__, error)
            log.debug("the traceback of that failure", exc_info=True)
            self.problem = f"checking the setup failed: {type(error).__name__}: {error}"
        finally:
            if net is not None:
                net.close()

    def check_address(self, net: PodNetwork, settings: InitSettings) -> str | None:
        """Why the pod is not ready as far as its addresses go (None: they are on the egress interface)."""
        name = settings.interface
        index = net.link_index(name)
        missing = [s.ip for s in settings.sources.values() if index is None or all(a.ip != s.ip for a in net.addresses(index, s.family))]
        self.address_present = not missing
        verb = "is" if len(missing) == 1 else "are"
        return f"{' and '.join(map(str, missing))} {verb} not on {name} (run init again)" if missing else None

    def repaired(self, what: str, changed: bool, name: str, reason: str) -> None:
        """Only a change found after a pass kept the same target counts as a restore: something changed it."""
        if not changed:
            return
        if reason == FIRST:
            log.warning("%s %s", name, reason)
        else:
            log.info("%s %s", name, reason)
        if reason == RESTORED:
            count(self.restores, what)

    def read_counters(self, target: Target) -> None:
        """Each rule's packets and bytes by its label; `snat` and `metrics-port` add up both families' rules."""
        totals: dict[tuple[str, ...], tuple[int, int]] = {}
        for family in target.plan.families:
            found = self.backend.counters(family.nat) if family.nat is not None else None
            if found is None:
                continue
            labels = [label for _, label in labelled_nat_rules(target.settings, family.family)]
            for label, (packets, size) in zip(labels, found, strict=True):
                before = totals.get((label,), (0, 0))
                totals[(label,)] = (before[0] + packets, before[1] + size)
        if totals:
            self.nat_counters = totals

    def ready(self) -> str | None:
        if self.stopping or self.stop.is_set():
            return "draining: stopping on SIGTERM"
        return self.problem or next((reason for guard in self.guards if (reason := guard.reason()) is not None), None)

    def check_claims(self) -> None:
        """On the loop, after each pass (the first opens the watch): another host claiming our address (see AddressGuard).
        The first also probes once and announces ANSWER_TIME later, and again REPEAT_AFTER after that, if no one
        answered (the loop's timers: a fork, as init's second announcement takes, is no thing to do beside threads)."""
        try:
            if not self.started:  # scheduled first: a failure below must not cost the announcements
                self.started = True
                loop = asyncio.get_running_loop()
                loop.call_later(ANSWER_TIME, self.announce)
                loop.call_later(ANSWER_TIME + arp.REPEAT_AFTER, self.announce)
                for guard in self.guards:
                    guard.probe_now()
            for guard in self.guards:
                if guard.check():
                    self.announced_at = time.time()
        except Exception as error:  # like a pass: reported and tried again at the next check, never a dead monitor
            log.error("watching for another host claiming the address failed: %s: %s", type(error).__name__, error)
            log.debug("the traceback of that failure", exc_info=True)


def list_parser(settings: InitSettings) -> Callable[[str], Destinations]:
    """A new version of the list file is checked as init checks it: no rule may take the metrics port, and no
    destination may be of a family the router has no source of."""
    return lambda text: check_metrics_port(destinations_for(text, settings.sources), settings.metrics_port)


async def watch_until_stopped(
    settings: InitSettings,
    nameservers: tuple[IPAddress, ...],
    list_file: ListFile | None,
    interval: float,
    backend: Backend,
    stop: asyncio.Event,
) -> None:
    keeper = Keeper(settings, build_plan(settings, nameservers), backend, stop)
    wake = asyncio.Event()
    reloads = keeper.stats.counter(CONFIG_RELOADS.name)

    def use(destinations: Destinations) -> None:
        keeper.use(destinations)
        wake.set()

    log.info("watching %s every %g s%s", settings.interface, interval, f" and {list_file.path}" if list_file else "")
    probes = local_probes(settings.mode.value if settings.mode is Mode.LEGACY else "monitor", keeper.stats, keeper.ready)
    async with serving(settings.metrics_port, probes):
        with following(list_file, "EGRESS_DESTINATION_FILE", list_parser(settings), use, lambda result: count(reloads, result)):
            try:
                await keep(keeper, stop, wake, interval)
            finally:
                for guard in keeper.guards:
                    guard.close()
        keeper.stopping = True  # the NAT stays in the kernel: new connections still work until the pod is gone
        await linger(stop, settings.shutdown_delay)
    log.info("stopped")


async def keep(keeper: Keeper, stop: asyncio.Event, wake: asyncio.Event, interval: float) -> None:
    while not stop.is_set():
        wake.clear()
        # pyroute2's synchronous API runs an event loop of its own: in a thread, not inside ours
        await asyncio.to_thread(keeper.apply)
        keeper.check_claims()
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
        await asyncio.wait(waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()


def run(settings: InitSettings, nameservers: tuple[IPAddress, ...], list_file: ListFile | None, interval: float, backend: Backend) -> int:
    run_loop(lambda stop: watch_until_stopped(settings, nameservers, list_file, interval, backend, stop))
    return 0
