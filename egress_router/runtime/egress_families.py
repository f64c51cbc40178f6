"""Which address families leave through the egress side: those whose default route is not on the pod's `eth0`.

Why: `init` moves the default route only for the families of EGRESS_SOURCE, so an IPv4-only router in a dual-stack
cluster keeps `eth0`'s IPv6 default route. The proxies resolve AAAA too; connecting to those addresses would leave
from the cluster's address, not the egress one. The proxies run unprivileged without pyroute2, so the routes are read
from `/proc/net/route` and `/proc/net/ipv6_route` (this namespace's main table), parsed by plain functions.
Whether the pod can send IPv6 at all (any route, eth0's too: then the DNS proxy asks for AAAA records) is answered
here as well, so one object tells the proxies which families they may use.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable

from egress_router.config.addresses import IPAddress

log = logging.getLogger(__name__)
#: The pod's cluster interface (init's CLUSTER_INTERFACE; not imported: the proxies' image has no pyroute2).
CLUSTER_INTERFACE = "eth0"
IPV4_ROUTES = "/proc/net/route"
IPV6_ROUTES = "/proc/net/ipv6_route"
#: How often the routes are read again (a later `init` run may add or drop a family); reading is ~20 µs.
REREAD_EVERY = 60.0
RTF_UP = 0x1
RTF_REJECT = 0x200
FAMILY_NAMES = {4: "IPv4", 6: "IPv6"}
#: Connecting a UDP socket here asks the routing table for an IPv6 route; no packet is sent (a documentation address).
IPV6_PROBE = ("2001:db8::1", 53)


def ipv4_default_interfaces(text: str) -> set[str]:
    """Interfaces of the usable default routes in `/proc/net/route` text (hex destination and mask both 0)."""
    found = set()
    for line in text.splitlines()[1:]:  # the first line names the columns
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, flags, mask = int(fields[1], 16), int(fields[3], 16), int(fields[7], 16)
        except ValueError:
            continue
        if destination == 0 and mask == 0 and flags & RTF_UP and not flags & RTF_REJECT:
            found.add(fields[0])
    return found


def ipv6_default_interfaces(text: str) -> set[str]:
    """Interfaces of the usable default routes in `/proc/net/ipv6_route` text (::/0, up, not a reject route on `lo`)."""
    found = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            destination, length, flags = int(fields[0], 16), int(fields[1], 16), int(fields[8], 16)
        except ValueError:
            continue
        if destination == 0 and length == 0 and flags & RTF_UP and not flags & RTF_REJECT and fields[9] != "lo":
            found.add(fields[9])
    return found


def egress_families(ipv4_text: str | None, ipv6_text: str | None, cluster: str = CLUSTER_INTERFACE) -> frozenset[int] | None:
    """Versions (4, 6) with a default route off `cluster`; None when none has one (or no file could be read):
    not a router pod with its routes in place, so nothing is filtered (a file that cannot be read serves no family)."""
    served = set()
    if ipv4_text is not None and ipv4_default_interfaces(ipv4_text) - {cluster}:
        served.add(4)
    if ipv6_text is not None and ipv6_default_interfaces(ipv6_text) - {cluster}:
        served.add(6)
    return frozenset(served) or None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as routes:
            return routes.read()
    except OSError:
        return None


def can_send_ipv6() -> bool:
    """Whether this namespace has an IPv6 route out (then names are asked for AAAA records too)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.connect(IPV6_PROBE)
            return True
    except OSError:
        return False


class EgressFamilies:
    """The families the proxy may connect over, read at start and again at most every REREAD_EVERY seconds when asked;
    `sends_ipv6`, whether the pod has an IPv6 route at all, is asked once at start."""

    def __init__(
        self,
        read: Callable[[str], str | None] = _read,
        clock: Callable[[], float] = time.monotonic,
        every: float = REREAD_EVERY,
        probe: Callable[[], bool] = can_send_ipv6,
    ) -> None:
        self.sends_ipv6 = probe()
        self.read = read
        self.clock = clock
        self.every = every
        self.served: frozenset[int] | None = None
        self.read_at = 0.0
        self.logged: frozenset[int] | None | bool = False  # what was last logged: one line per change
        self.refresh()

    def refresh(self) -> None:
        self.read_at = self.clock()
        self.served = egress_families(self.read(IPV4_ROUTES), self.read(IPV6_ROUTES))
        if self.served != self.logged:
            self.logged = self.served
            if self.served is None:
                log.info("no default route off %s (or %s unreadable): connecting over both families", CLUSTER_INTERFACE, IPV4_ROUTES)
            else:
                log.info(
                    "egress default routes for %s: connecting over those only", ", ".join(FAMILY_NAMES[v] for v in sorted(self.served))
                )

    def current(self) -> frozenset[int] | None:
        if self.clock() - self.read_at >= self.every:
            self.refresh()
        return self.served

    def keep(self, addresses: Iterable[IPAddress]) -> list[IPAddress]:
        """The addresses of served families, in their order."""
        served = self.current()
        return [a for a in addresses if served is None or a.version in served]


def unserved_reason(addresses: Iterable[IPAddress]) -> str:
    """Why none of `addresses` is connected to: the router has no egress address of their families."""
    names = sorted({FAMILY_NAMES[a.version] for a in addresses})
    return f"this router has no {' or '.join(names)} egress address (EGRESS_SOURCE)"
