"""The running watch's whole conflict, for either family (test_claim.py's IPv4, test_claim_ipv6.py's IPv6): a LAN
host takes the router's address, the router is unready while that host answers its probes, and once it is gone the
router announces the address once, the gateway points at it again and traffic flows."""

from __future__ import annotations

import time
from collections.abc import Callable

from egress_router.init.conflicts import ANSWER_TIME
from egress_router.lab import Lab
from egress_router.lab.topology import Process
from tests.lab.conftest import Pod
from tests.lab.waiting import eventually


def conflict_comes_and_goes(
    lab: Lab, pod: Pod, watcher: Process, *, command: str, source: str, via: str, take: Callable[[], str], how: str
) -> str:
    """`take()` makes the LAN host "intruder" hold and announce `source` and returns its MAC; `via` is the router's
    address a client reaches it by over that family, `how` the announcement's kind. Returns the conflict's end line."""
    router = lab.link_mac(pod.role, "macvlan0")
    try:
        intruder = take()
        reason = f"another host (MAC {intruder}) claims {source}"
        eventually(lambda: pod.readyz() == (503, reason + "\n"), what=lambda: f"{pod.readyz()}; {watcher.stderr()}")
        assert pod.metric("egress_router_address_conflict") == 1
        assert pod.metric("egress_router_address_conflicts_total") == 1
        assert f"WARNING address conflict: {reason} on macvlan0; not ready until it stops" in watcher.stderr()
        assert lab.neighbour_mac("gw", source) == intruder  # what the conflict does: replies go to the intruder
        # it answers the router's probes (ARP, or duplicate address detection's), so the conflict lasts
        time.sleep(2 * ANSWER_TIME + 0.5)
        assert pod.readyz() == (503, reason + "\n")
    finally:
        lab.remove_namespace("intruder")

    # a probe at each check: over at most two check intervals after the host went (300 ms here, legacy's 10 s)
    eventually(lambda: pod.readyz() == (200, "ok\n"), seconds=6 if command == "monitor" else 25)
    assert pod.metric("egress_router_address_conflict") == 0
    assert pod.metric("egress_router_address_conflicts_total") == 1
    over = f"address conflict over: MAC {intruder} no longer answers for {source} on macvlan0; announced it with {how}"
    assert watcher.stderr().count(over) == 1
    # the one announcement points the gateway at the router again, and traffic flows
    eventually(lambda: lab.neighbour_mac("gw", source) == router)
    assert lab.tcp("client", via, 80).client == source
    assert "Traceback" not in watcher.stderr()
    return over
