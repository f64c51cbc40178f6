"""`egress-router monitor`: the redirect pod's long-running container.

It keeps what `init` set up true: it announces the egress address again (the init container may exit
before its second gratuitous ARP), re-applies the NAT rules when EGRESS_DESTINATION_FILE changes
(a bad new list is logged and ignored), and puts the rules back if anything removed them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from egress_router import arp, nat
from egress_router.config.destinations import parse_destinations
from egress_router.config.init_settings import InitSettings
from egress_router.errors import ApplyError
from egress_router.plan import nat_rules_for
from egress_router.watch import ListFile, following
from egress_router.workers import run_loop

log = logging.getLogger(__name__)


async def watch_until_stopped(settings: InitSettings, list_file: ListFile | None, interval: float, stop: asyncio.Event) -> None:
    current = {"settings": settings}

    def apply(reason: str) -> None:
        try:
            if nat.apply_nat(nat_rules_for(current["settings"])):
                log.info("NAT rules %s", reason)
        except ApplyError as error:
            log.error("%s", error)

    arp.announce_now_and_later(settings.interface, settings.source.ip)
    apply("installed (they were missing or different)")

    def use(destinations: object) -> None:
        current["settings"] = replace(current["settings"], destinations=destinations)
        apply("replaced from the new list")

    log.info("watching %s every %g s%s", settings.interface, interval, f" and {list_file.path}" if list_file else "")
    with following(list_file, "EGRESS_DESTINATION_FILE", parse_destinations, use):
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                apply("restored (something had changed them)")
    log.info("stopped")


def run(settings: InitSettings, list_file: ListFile | None, interval: float) -> int:
    run_loop(lambda stop: watch_until_stopped(settings, list_file, interval, stop))
    return 0
