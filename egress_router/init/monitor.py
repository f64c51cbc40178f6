"""`egress-router monitor`: the redirect pod's long-running container.

It keeps what `init` set up true: it announces the egress address again (the init container may exit
before its second gratuitous ARP), re-applies the NAT rules when EGRESS_DESTINATION_FILE changes
(a bad new list is logged and ignored), and puts back the NAT rules, the reply marks, the mark rule,
eth0's reply table and the routes kept on eth0 if anything removed them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from ipaddress import IPv4Address

from egress_router.config.destinations import Destinations, parse_destinations
from egress_router.config.init_settings import InitSettings
from egress_router.errors import ApplyError
from egress_router.init import arp, nat
from egress_router.init.apply import ClusterSide, decide_cluster_side, keep_cluster_side
from egress_router.init.journal import Journal
from egress_router.init.netlink import PodNetwork, PolicyRouting
from egress_router.init.plan import NetworkPlan, build_plan
from egress_router.runtime.watch import ListFile, following
from egress_router.runtime.workers import run_loop

log = logging.getLogger(__name__)


class Keeper:
    """Puts the plan's policy routing and rules back; what eth0 keeps is read once, while init's setup is intact."""

    def __init__(self, plan: NetworkPlan) -> None:
        self.plan = plan
        self.side: ClusterSide | None = None

    def apply(self, reason: str) -> None:
        net = PodNetwork(Journal())  # nothing is rolled back here: every step that lands is a repair
        try:
            routing = PolicyRouting(net)
            if self.side is None:
                self.side = decide_cluster_side(routing, self.plan)
            if keep_cluster_side(routing, self.side, reread=True):
                log.info("reply routing %s", reason)
            if nat.apply_chains(self.plan.marks):
                log.info("reply marks %s", reason)
            if self.plan.nat is not None and nat.apply_chains(self.plan.nat):
                log.info("NAT rules %s", reason)
        except ApplyError as error:
            log.error("%s", error)
        finally:
            net.close()


async def watch_until_stopped(
    settings: InitSettings, nameservers: tuple[IPv4Address, ...], list_file: ListFile | None, interval: float, stop: asyncio.Event
) -> None:
    keeper = Keeper(build_plan(settings, nameservers))
    arp.announce_now_and_later(settings.interface, settings.source.ip)
    wake = asyncio.Event()
    reason = "installed (they were missing or different)"

    def use(destinations: Destinations) -> None:
        nonlocal reason
        keeper.plan = build_plan(replace(settings, destinations=destinations), nameservers)
        reason = "replaced from the new list"
        wake.set()

    log.info("watching %s every %g s%s", settings.interface, interval, f" and {list_file.path}" if list_file else "")
    with following(list_file, "EGRESS_DESTINATION_FILE", parse_destinations, use):
        while not stop.is_set():
            wake.clear()
            # pyroute2's synchronous API runs an event loop of its own: in a thread, not inside ours
            await asyncio.to_thread(keeper.apply, reason)
            reason = "restored (something had changed them)"
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
            await asyncio.wait(waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()
    log.info("stopped")


def run(settings: InitSettings, nameservers: tuple[IPv4Address, ...], list_file: ListFile | None, interval: float) -> int:
    run_loop(lambda stop: watch_until_stopped(settings, nameservers, list_file, interval, stop))
    return 0
