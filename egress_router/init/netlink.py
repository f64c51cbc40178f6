"""The pod's links, addresses and routes through netlink (pyroute2).

Every change returns nothing but records how to undo itself in a Journal, so a failure part-way
through `init` can put the pod's network back as it was found.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
import time
from collections.abc import Callable
from functools import partial
from ipaddress import IPv6Address, ip_address, ip_interface, ip_network
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from egress_router.config.addresses import FAMILY_NAMES, IPV4, IPV6, IPAddress, IPInterface, family_of
from egress_router.config.init_settings import MacvlanRequest
from egress_router.errors import ApplyError
from egress_router.init.cluster_routes import KernelRoute
from egress_router.init.journal import Journal, describe

log = logging.getLogger(__name__)

AF_INET = 2
AF_INET6 = 10
AF = {IPV4: AF_INET, IPV6: AF_INET6}
#: The whole address space of each family, as route messages name it (no RTA_DST: a default route).
ANY = {AF_INET: "0.0.0.0", AF_INET6: "::"}
MAIN_TABLE = 254
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
IFA_F_PERMANENT = 0x80  # an address added by hand (or by init); SLAAC and temporary addresses have lifetimes instead
IFA_F_MANAGETEMPADDR = 0x100
IFA_F_NOPREFIXROUTE = 0x200
#: Route lifetimes (RTA_CACHEINFO's rta_expires) count in clock ticks of USER_HZ; RTA_EXPIRES takes seconds.
USER_HZ = 100
#: Duplicate address detection takes a second or two (a random delay up to 1 s, then one probe 1 s long);
#: a link without carrier never finishes it.
DAD_TIMEOUT = 10.0


class DadFailed(ApplyError):
    """Duplicate address detection found another host with the address (the kernel does not say which)."""


RTPROT_KERNEL = 2
RTPROT_RA = 9  # a route a router advertisement installed (default router, route information)
RTN_UNICAST = 1
RTNH_F_ONLINK = 4
SCOPE_LINK = 253
#: Route attributes that identify a route and are needed to put it back, with pyroute2's names.
ROUTE_ATTRS = {"RTA_DST": "dst", "RTA_GATEWAY": "gateway", "RTA_OIF": "oif", "RTA_PRIORITY": "priority", "RTA_PREFSRC": "prefsrc"}


def route_spec(route: Any) -> dict[str, Any]:
    """A route read from the kernel as the keyword arguments that delete or re-create it."""
    spec: dict[str, Any] = {
        "dst_len": route["dst_len"],
        "scope": route["scope"],
        "proto": route["proto"],
        "type": route["type"],
        "table": MAIN_TABLE,
        "family": route["family"],
        "dst": ANY[route["family"]],
    }
    for attr, name in ROUTE_ATTRS.items():
        value = route.get_attr(attr)
        if value is not None:
            spec[name] = value
    return spec


class PodNetwork:
    """Netlink operations on the pod's network namespace, each one journaled."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.ipr = IPRoute()

    def close(self) -> None:
        self.ipr.close()

    def change(self, what: str, do: Callable[[], Any], undo: Callable[[], Any]) -> None:
        """One journaled change: `do` it (a failure says what was being done), then record how to undo it."""
        self._call(what, do)
        self.journal.record(what, undo)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (NetlinkError, OSError) as error:
            raise ApplyError(f"cannot {what}: {describe(error)}") from error

    # links -----------------------------------------------------------------------------------

    def link_index(self, name: str) -> int | None:
        found = self.ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def link(self, index: int) -> Any:
        return self.ipr.get_links(index)[0]

    def link_name(self, index: int | None) -> str:
        if index is None:
            return "?"
        try:
            return str(self.link(index).get_attr("IFLA_IFNAME"))
        except NetlinkError:
            return f"#{index}"

    def create_macvlan(self, name: str, request: MacvlanRequest) -> int:
        """Create a macvlan on the node's interface and move it here, as the SDN would have."""
        if not os.path.exists(request.host_netns):
            raise ApplyError(
                f"EGRESS_HOST_NETNS: {request.host_netns} does not exist (the node's network namespace; "
                "the default /proc/1/ns/net needs hostPID: true)"
            )
        host_stat, pod_stat = os.stat(request.host_netns), os.stat("/proc/thread-self/ns/net")
        if (host_stat.st_dev, host_stat.st_ino) == (pod_stat.st_dev, pod_stat.st_ino):
            raise ApplyError(
                f"EGRESS_HOST_NETNS: {request.host_netns} is this pod's own network namespace, not the node's "
                "(set hostPID: true on the pod, or point EGRESS_HOST_NETNS at the node's namespace)"
            )
        temporary = "egr" + secrets.token_hex(4)
        pod_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            with IPRoute(netns=request.host_netns, flags=0) as host:
                masters = host.link_lookup(ifname=request.master)
                if not masters:
                    raise ApplyError(
                        f"EGRESS_MACVLAN_MASTER: no interface '{request.master}' in the node's network namespace ({request.host_netns})"
                    )
                what = f"create macvlan on {request.master} in {request.host_netns}"
                self._call(what, host.link, "add", ifname=temporary, kind="macvlan", link=masters[0], macvlan_mode=request.mode)
                created = host.link_lookup(ifname=temporary)[0]
                try:
                    self._call("move the new macvlan into the pod", host.link, "set", index=created, net_ns_fd=pod_ns)
                except ApplyError:
                    host.link("del", index=created)
                    raise
        except NetlinkError as error:
            raise ApplyError(f"cannot use the node's network namespace {request.host_netns}: {describe(error)}") from error
        except OSError as error:
            raise ApplyError(f"cannot enter the node's network namespace {request.host_netns}: {describe(error)}") from error
        finally:
            os.close(pod_ns)
        index = self.link_index(temporary)
        if index is None:
            raise ApplyError("the new macvlan did not arrive in the pod's network namespace")
        self.journal.record(f"create {name}", lambda: self.ipr.link("del", index=index))
        self._call(f"rename the new macvlan to {name}", self.ipr.link, "set", index=index, ifname=name)
        log.info("created %s: macvlan (%s) on %s in %s", name, request.mode, request.master, request.host_netns)
        return index

    def set_up(self, index: int, name: str) -> bool:
        if self.link(index)["flags"] & 1:  # IFF_UP
            log.debug("%s is already up", name)
            return False
        link = partial(self.ipr.link, "set", index=index)
        self.change(f"bring {name} up", partial(link, state="up"), partial(link, state="down"))
        log.debug("%s is up", name)
        return True

    # addresses -------------------------------------------------------------------------------

    def addresses(self, index: int, family: str = IPV4) -> list[IPInterface]:
        """The interface's addresses of `family`; IPv6 link-local ones (the kernel's own, for neighbour discovery) left out."""
        return [address for address, _ in self._held(index, family)]

    def _held(self, index: int, family: str) -> list[tuple[IPInterface, Any]]:
        """addresses() with the netlink message of each."""
        found = [
            (ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"), a) for a in self.ipr.get_addr(family=AF[family], index=index)
        ]
        return [(address, message) for address, message in found if not (isinstance(address.ip, IPv6Address) and address.ip.is_link_local)]

    def _remove_address(self, index: int, current: IPInterface, message: Any, what: str) -> None:
        """A rollback puts the address back as it was; a SLAAC one with the lifetimes it had left and no prefix route of its
        own (the advertised prefix's route is apart, and a permanent address would make that route permanent too)."""
        address = {"index": index, "address": str(current.ip), "prefixlen": current.network.prefixlen}
        flags = message.get_attr("IFA_FLAGS") or message["flags"]
        back = address
        if not flags & IFA_F_PERMANENT:
            lifetimes = message.get_attr("IFA_CACHEINFO") or {}
            back = {
                **address,
                "preferred": lifetimes.get("ifa_preferred", 0),
                "valid": lifetimes.get("ifa_valid", 0),
                "IFA_FLAGS": flags & IFA_F_MANAGETEMPADDR | IFA_F_NOPREFIXROUTE,
            }
        self.change(what, partial(self.ipr.addr, "del", **address), partial(self.ipr.addr, "add", **back))

    def set_only_address(self, index: int, name: str, wanted: IPInterface) -> bool:
        """Make `wanted` the interface's only address of its family (a new EGRESS_SOURCE replaces the old); IPv6
        link-local addresses stay."""
        changed = False
        family = family_of(wanted)
        for current, message in self._held(index, family):
            if current == wanted:
                continue
            self._remove_address(index, current, message, f"remove old address {current} from {name}")
            log.info("removed old address %s from %s", current, name)
            changed = True
        if wanted in self.addresses(index, family):
            log.debug("%s already has %s", name, wanted)
        else:
            if family == IPV6 and ipv6_disabled(name):
                raise ApplyError(
                    f"EGRESS_SOURCE: IPv6 is disabled on {name} (net.ipv6.conf.{name}.disable_ipv6 is not 0, or the kernel has no"
                    " IPv6): enable it in the pod, or give EGRESS_SOURCE no IPv6 address"
                )
            address = {"index": index, "address": str(wanted.ip), "prefixlen": wanted.network.prefixlen}
            self.change(
                f"add address {wanted} to {name}", partial(self.ipr.addr, "add", **address), partial(self.ipr.addr, "del", **address)
            )
            log.info("added address %s to %s", wanted, name)
            changed = True
        return changed

    # routes ----------------------------------------------------------------------------------

    def wait_for_dad(self, index: int, name: str, address: IPAddress, timeout: float = DAD_TIMEOUT) -> None:
        """Return once `address` is usable (duplicate address detection done); ApplyError when DAD found another
        host with it, or did not finish in time. IPv4 addresses are usable at once."""
        if address.version == 4:
            return
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            found = [a for a in self.ipr.get_addr(family=AF_INET6, index=index) if a.get_attr("IFA_ADDRESS") == str(address)]
            if not found:
                raise ApplyError(f"EGRESS_SOURCE: {address} disappeared from {name} during duplicate address detection")
            flags = found[0].get_attr("IFA_FLAGS") or found[0]["flags"]
            if flags & IFA_F_DADFAILED:
                raise DadFailed(
                    f"EGRESS_SOURCE: {address} is already used by another host on {name}'s network (duplicate address detection"
                    " failed); reserve an address nobody else has"
                )
            if not flags & IFA_F_TENTATIVE:
                if waited:
                    log.info("%s on %s passed duplicate address detection", address, name)
                return
            if time.monotonic() > deadline:
                raise ApplyError(
                    f"EGRESS_SOURCE: {address} on {name} is still tentative after {timeout:g} s (duplicate address detection did"
                    f" not finish: has {name} a carrier, is the node's interface up?)"
                )
            if not waited:
                log.debug("waiting for duplicate address detection of %s on %s", address, name)
                waited = True
            time.sleep(0.05)

    def _routes(self, family: int = AF_INET, **filters: Any) -> list[Any]:
        return list(self.ipr.get_routes(family=family, table=MAIN_TABLE, **filters))

    def _add_route(self, what: str, **spec: Any) -> None:
        self.change(f"add route {what}", partial(self.ipr.route, "add", **spec), partial(self.ipr.route, "del", **spec))

    def _delete_route(self, route: Any, what: str) -> None:
        spec = route_spec(route)
        self.change(f"delete route {what}", partial(self.ipr.route, "del", **spec), partial(self.ipr.route, "add", **spec))
        log.info("removed route %s", what)

    def clear_family(self, index: int, name: str, family: str) -> bool:
        """A family the router no longer serves: its routes through the egress interface (the kernel's aside) and its
        addresses there (IPv6 link-local aside) go."""
        changed = False
        for route in sorted(self._routes(AF[family], oif=index), key=lambda r: r.get_attr("RTA_GATEWAY") is None):
            if route["proto"] != RTPROT_KERNEL:
                self._delete_route(route, kernel_route(route).describe({index: name}))
                changed = True
        for current in self.addresses(index, family):
            address = {"index": index, "address": str(current.ip), "prefixlen": current.network.prefixlen}
            self.change(
                f"remove address {current} from {name}", partial(self.ipr.addr, "del", **address), partial(self.ipr.addr, "add", **address)
            )
            log.info("removed address %s from %s (%s is no longer in EGRESS_SOURCE)", current, name, FAMILY_NAMES[family])
            changed = True
        return changed

    def drop_router_advertised(self, index: int, name: str) -> bool:
        """Remove what router advertisements gave the interface before they were turned off: their routes (`proto ra`,
        and the prefix routes the kernel made from them, which expire) and the SLAAC addresses (IPv6 addresses with
        lifetimes: what init and `ip addr add` make is permanent). Link-local addresses and routes stay. A rollback puts
        them back with the lifetimes they had left, but an advertised default route only where no other IPv6 default
        route has its metric (one added by hand would clash with it): init does this last."""
        changed = False
        for route in self._routes(AF_INET6, oif=index):
            expires = (route.get_attr("RTA_CACHEINFO") or {}).get("rta_expires", 0)
            if route["proto"] != RTPROT_RA and not (expires and route["dst_len"] > 0 and route["proto"] == RTPROT_KERNEL):
                continue
            spec = route_spec(route)
            back = {**spec, "RTA_EXPIRES": struct.pack("=I", max(1, expires // USER_HZ))} if expires else spec
            what = f"{kernel_route(route).describe({index: name})} (from a router advertisement)"
            self.change(f"delete route {what}", partial(self.ipr.route, "del", **spec), partial(self.ipr.route, "add", **back))
            log.info("removed route %s", what)
            changed = True
        for current, message in self._held(index, IPV6):
            if (message.get_attr("IFA_FLAGS") or message["flags"]) & IFA_F_PERMANENT:
                continue
            self._remove_address(index, current, message, f"remove SLAAC address {current} from {name}")
            log.info("removed address %s from %s (configured from a router advertisement)", current, name)
            changed = True
        return changed

    def set_gateway_route(self, index: int, name: str, gateway: IPAddress) -> bool:
        """Gateway on-link through the egress interface; stale on-link routes of earlier runs (of its family) go.

        IPv6 has no route scopes: there, an on-link host route is one without a next hop."""
        changed = False
        present = False
        family, bits = AF[family_of(gateway)], gateway.max_prefixlen
        for route in self._routes(family, oif=index):
            onlink = route["scope"] == SCOPE_LINK if family == AF_INET else route.get_attr("RTA_GATEWAY") is None
            if route["dst_len"] != bits or not onlink or route["proto"] == RTPROT_KERNEL:
                continue
            if route.get_attr("RTA_DST") == str(gateway):
                present = True
            else:
                self._delete_route(route, f"{route.get_attr('RTA_DST')} dev {name}")
                changed = True
        if present:
            log.debug("route %s dev %s scope link already present", gateway, name)
        else:
            if family == AF_INET:
                what = f"{gateway} dev {name} scope link"
                self._add_route(what, dst=f"{gateway}/32", oif=index, scope="link", table=MAIN_TABLE)
            else:
                what = f"{gateway} dev {name}"
                self._add_route(what, family=AF_INET6, dst=f"{gateway}/128", oif=index, table=MAIN_TABLE)
            log.info("added route %s", what)
            changed = True
        return changed

    def set_default_route(self, index: int, name: str, gateway: IPAddress, source: IPAddress | None = None) -> bool:
        """Exactly one default route of the gateway's family, via the gateway on the egress interface.

        `source` becomes the route's preferred source (IPv6: an address the link's router advertisements might add
        must never be picked for the pod's own connections)."""
        family = AF[family_of(gateway)]
        defaults = self._routes(family, dst_len=0)
        wanted = [
            r
            for r in defaults
            if r.get_attr("RTA_GATEWAY") == str(gateway)
            and r.get_attr("RTA_OIF") == index
            and r.get_attr("RTA_PREFSRC") == (str(source) if source else None)
        ]
        if len(defaults) == 1 and wanted:
            log.debug("default route already via %s dev %s", gateway, name)
            return False
        for route in defaults:
            if route not in wanted:
                via = route.get_attr("RTA_GATEWAY")
                self._delete_route(route, f"default via {via} dev {self.link_name(route.get_attr('RTA_OIF'))}")
        if not wanted:
            what = f"default via {gateway} dev {name}" + (f" src {source}" if source else "")
            spec: dict[str, Any] = {"family": family, "dst": f"{ANY[family]}/0", "gateway": str(gateway), "oif": index, "table": MAIN_TABLE}
            if source:
                spec["prefsrc"] = str(source)
            self._add_route(what, **spec)
            log.info("added route %s", what)
        return True


def ipv6_disabled(interface: str) -> bool:
    try:
        with open(f"/proc/sys/net/ipv6/conf/{interface}/disable_ipv6", encoding="ascii") as f:
            return f.read().strip() != "0"
    except OSError:
        return True  # no such file: a kernel without IPv6


def kernel_route(message: Any) -> KernelRoute:
    """A route message from pyroute2 as plain data."""
    gateway, prefsrc = message.get_attr("RTA_GATEWAY"), message.get_attr("RTA_PREFSRC")
    return KernelRoute(
        dst=ip_network(f"{message.get_attr('RTA_DST') or ANY[message['family']]}/{message['dst_len']}", strict=False),
        oif=message.get_attr("RTA_OIF"),
        gateway=ip_address(gateway) if gateway else None,
        scope=message["scope"],
        onlink=bool(message["flags"] & RTNH_F_ONLINK),
        proto=message["proto"],
        prefsrc=ip_address(prefsrc) if prefsrc else None,
        metric=message.get_attr("RTA_PRIORITY"),
        table=message.get_attr("RTA_TABLE") or message["table"],
    )


def route_arguments(route: KernelRoute) -> dict[str, Any]:
    """The keyword arguments that add (or delete) exactly this route with pyroute2."""
    spec: dict[str, Any] = {
        "family": AF_INET if route.dst.version == 4 else AF_INET6,
        "dst": str(route.dst),
        "oif": route.oif,
        "table": route.table,
        "scope": route.scope,
        "proto": route.proto,
    }
    if route.gateway:
        spec["gateway"] = str(route.gateway)
    if route.onlink:
        spec["flags"] = RTNH_F_ONLINK
    if route.prefsrc:
        spec["prefsrc"] = str(route.prefsrc)
    if route.metric is not None:
        spec["priority"] = route.metric
    return spec


class PolicyRouting:
    """Routes as plain data, and the fwmark rule: the part of the pod's routing that keeps replies on eth0."""

    def __init__(self, net: PodNetwork) -> None:
        self.net = net
        self.ipr = net.ipr

    def names(self) -> dict[int, str]:
        return {link["index"]: str(link.get_attr("IFLA_IFNAME")) for link in self.ipr.get_links()}

    def routes(self, table: int, family: str = IPV4) -> list[KernelRoute]:
        return [kernel_route(r) for r in self.ipr.get_routes(family=AF[family], table=table) if r["type"] == RTN_UNICAST]

    def has_global_address(self, index: int, family: str) -> bool:
        """Whether the interface has an address of `family` other than IPv6 link-local: whether the pod network uses that family."""
        return bool(self.net.addresses(index, family))

    def lookup(self, address: IPAddress) -> KernelRoute | None:
        """Where the kernel sends `address` now (policy rules included), or None when it cannot."""
        try:
            found = self.ipr.route("get", dst=str(address))
        except NetlinkError:
            return None
        return kernel_route(found[0]) if found else None

    def replace_routes(self, current: list[KernelRoute], remove: list[KernelRoute], add: list[KernelRoute], names: dict[int, str]) -> bool:
        """Delete, then add; every step journaled. `current` is only for the log."""
        for route in remove:
            spec, what = route_arguments(route), route.describe(names)
            self.net.change(f"delete route {what}", partial(self.ipr.route, "del", **spec), partial(self.ipr.route, "add", **spec))
            log.info("removed route %s", what)
        for route in add:
            spec, what = route_arguments(route), route.describe(names)
            self.net.change(f"add route {what}", partial(self.ipr.route, "add", **spec), partial(self.ipr.route, "del", **spec))
            log.info("added route %s", what)
        if not remove and not add:
            log.debug("%d route(s) already in place", len(current))
        return bool(remove or add)

    def has_mark_rule(self, mark: int, table: int, priority: int, family: str) -> bool:
        return any(
            r.get_attr("FRA_PRIORITY") == priority
            and (r.get_attr("FRA_TABLE") or r["table"]) == table
            and r.get_attr("FRA_FWMARK") == mark
            and r.get_attr("FRA_FWMASK") == mark
            for r in self.ipr.get_rules(family=AF[family])
        )

    def set_mark_rule(self, mark: int, table: int, priority: int, family: str = IPV4, *, keep: bool = True) -> bool:
        """Exactly one rule of `family` at `priority`: packets carrying `mark` look up `table` (`keep` False: that rule
        goes, a family the router no longer serves)."""
        wanted = {"family": AF[family], "table": table, "priority": priority, "fwmark": mark, "fwmask": mark}
        what = f"{'-6 ' if family != IPV4 else ''}rule fwmark {mark:#x}/{mark:#x} lookup {table} priority {priority}"
        present = removed = False
        for rule in self.ipr.get_rules(family=AF[family]):
            if rule.get_attr("FRA_PRIORITY") != priority:
                continue
            shape = {
                "family": AF[family],
                "table": rule.get_attr("FRA_TABLE") or rule["table"],
                "priority": rule.get_attr("FRA_PRIORITY"),
                "fwmark": rule.get_attr("FRA_FWMARK"),
                "fwmask": rule.get_attr("FRA_FWMASK"),
            }
            if keep and shape == wanted and not present:
                present = True
                continue
            if not keep and shape != wanted:
                continue
            stale = {k: v for k, v in shape.items() if v is not None}
            self.net.change(
                f"delete rule at priority {priority}", partial(self.ipr.rule, "del", **stale), partial(self.ipr.rule, "add", **stale)
            )
            log.info("removed rule %s", stale)
            removed = True
        if not keep:
            return removed
        if present:
            log.debug("%s already present", what)
            return False
        self.net.change(f"add {what}", partial(self.ipr.rule, "add", **wanted), partial(self.ipr.rule, "del", **wanted))
        log.info("added %s", what)
        return True
