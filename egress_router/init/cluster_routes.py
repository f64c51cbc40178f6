"""What stays on eth0 when the default route moves to the egress interface. Pure: routes in, routes out.

On pod networks such as Calico, Cilium or OVN-Kubernetes a pod reaches other nodes' pods, its node and
the Service network only through eth0's default route. `init` moves the default route, so it keeps:
* eth0's routes, default included, in a table of their own (REPLY_TABLE), used by replies to connections
  that arrived on eth0 (the policy rule and conntrack marks in `plan`);
* host routes through eth0 for the pod's nameservers that eth0 reaches now (the cluster DNS Service);
* routes through eth0 for EGRESS_CLUSTER_NETWORKS.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from ipaddress import ip_network

from egress_router.config.addresses import IPAddress, IPNetwork
from egress_router.init.plan import REPLY_TABLE, ROUTE_PROTO

MAIN_TABLE = 254
RTPROT_BOOT = 3  # what `ip route add` gives a route
RTPROT_STATIC = 4
SCOPE_UNIVERSE = 0
SCOPE_LINK = 253


@dataclass(frozen=True)
class KernelRoute:
    """A unicast route (IPv4 or IPv6, as its `dst` is) as the edge reads it from, and writes it to, the kernel."""

    dst: IPNetwork
    oif: int | None
    gateway: IPAddress | None = None
    scope: int = SCOPE_UNIVERSE
    onlink: bool = False
    proto: int = RTPROT_STATIC
    prefsrc: IPAddress | None = None
    metric: int | None = None
    table: int = MAIN_TABLE

    @property
    def is_default(self) -> bool:
        return self.dst.prefixlen == 0

    def describe(self, names: Mapping[int, str]) -> str:
        host = self.dst.prefixlen == self.dst.max_prefixlen
        dst = "default" if self.is_default else str(self.dst.network_address if host else self.dst)
        parts = [dst]
        if self.gateway:
            parts.append(f"via {self.gateway}")
        parts.append(f"dev {names.get(self.oif, f'#{self.oif}') if self.oif is not None else '?'}")
        if self.table != MAIN_TABLE:
            parts.append(f"table {self.table}")
        if self.scope == SCOPE_LINK:
            parts.append("scope link")
        if self.prefsrc:
            parts.append(f"src {self.prefsrc}")
        if self.onlink:
            parts.append("onlink")
        return " ".join(parts)


class NoNextHop(Exception):
    """eth0 has no default route to keep: replies and cluster traffic would have no way back."""


def eth0_default(main: Iterable[KernelRoute], kept: Iterable[KernelRoute], eth0: int) -> KernelRoute:
    """eth0's default route (of the family the routes are of): in the main table on a first run, in REPLY_TABLE once
    init has moved it."""
    for routes in (main, kept):
        defaults = sorted((r for r in routes if r.is_default and r.oif == eth0), key=lambda r: r.metric or 0)
        if defaults:
            return defaults[0]
    raise NoNextHop


def reply_table(main: Iterable[KernelRoute], kept: Iterable[KernelRoute], eth0: int) -> tuple[KernelRoute, ...]:
    """REPLY_TABLE's routes: eth0's own (not those init added), link routes before the ones that need them."""
    main = list(main)
    default = eth0_default(main, kept, eth0)
    own = [r for r in main if r.oif == eth0 and not r.is_default and r.proto != ROUTE_PROTO]
    ordered = sorted(own, key=lambda r: (r.gateway is not None, -r.dst.prefixlen, int(r.dst.network_address))) + [default]
    return tuple(replace(r, table=REPLY_TABLE, proto=ROUTE_PROTO, metric=None) for r in ordered)


@dataclass(frozen=True)
class NameserverWay:
    """How a nameserver is reached now and what init does about it, for the debug log."""

    nameserver: IPAddress
    keep: bool  # whether init pins it to eth0
    reason: str


def nameserver_ways(
    nameservers: Iterable[IPAddress],
    lookups: Mapping[IPAddress, KernelRoute | None],
    main: Iterable[KernelRoute],
    eth0: int,
    names: Mapping[int, str],
) -> list[NameserverWay]:
    """A nameserver eth0 reaches only by its default route gets a host route there; any other stays as it is."""
    main = list(main)
    ways = []
    for nameserver in nameservers:
        found = lookups.get(nameserver)
        if found is None or found.oif is None:
            ways.append(NameserverWay(nameserver, False, "no route to it now: left alone"))
            continue
        dev = names.get(found.oif, f"#{found.oif}")
        if found.oif != eth0:
            ways.append(NameserverWay(nameserver, False, f"reached through {dev}, not {names.get(eth0, 'eth0')}: stays there"))
            continue
        covering = [r for r in main if r.oif == eth0 and not r.is_default and r.proto != ROUTE_PROTO and nameserver in r.dst]
        if covering:
            best = max(covering, key=lambda r: r.dst.prefixlen)
            ways.append(NameserverWay(nameserver, False, f"reached through {dev} by {best.describe(names)}, which stays"))
        else:
            ways.append(NameserverWay(nameserver, True, f"reached through {dev} by its default route: kept on {dev}"))
    return ways


def pinned_routes(default: KernelRoute, ways: Iterable[NameserverWay], cluster_networks: Iterable[IPNetwork]) -> tuple[KernelRoute, ...]:
    """Main-table routes through eth0's next hop for the nameservers kept there and EGRESS_CLUSTER_NETWORKS (all of
    `default`'s family)."""
    networks = list(cluster_networks)
    wanted = [ip_network(w.nameserver) for w in ways if w.keep and not any(w.nameserver in n for n in networks)]
    return tuple(
        KernelRoute(dst, default.oif, default.gateway, default.scope, default.onlink, ROUTE_PROTO)
        for dst in dict.fromkeys([*networks, *wanted])
    )


def same(route: KernelRoute) -> tuple[object, ...]:
    """What makes two routes the same for idempotence (metric and protocol aside)."""
    return (route.table, route.dst, route.oif, route.gateway, route.scope, route.onlink, route.prefsrc)


def differences(current: Iterable[KernelRoute], wanted: Iterable[KernelRoute]) -> tuple[list[KernelRoute], list[KernelRoute]]:
    """(to delete, to add) that turn `current` into `wanted`; deletions of gateway routes first, additions in order."""
    current, wanted = list(current), list(wanted)
    keys = {same(r) for r in wanted}
    have = {same(r) for r in current}
    remove = sorted((r for r in current if same(r) not in keys), key=lambda r: r.gateway is None)
    add = [r for r in wanted if same(r) not in have]
    return remove, add
