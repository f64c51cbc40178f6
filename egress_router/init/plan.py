"""The network an `init` run should leave behind, as plain data.

`unit-test` mode prints it, `init` applies it; nothing here touches the system.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv6Address
from typing import TypeVar

from egress_router.config.addresses import FAMILY_NAMES, IPV4, IPV6, IPAddress, IPInterface, IPNetwork, family_of
from egress_router.config.init_settings import InitSettings, MacvlanRequest
from egress_router.config.values import render_duration
from egress_router.init.claim import DEFAULT_TIMING, ProbeTiming

V = TypeVar("V", str, int)

CLUSTER_INTERFACE = "eth0"
DNAT_CHAIN = "EGRESS-ROUTER-DNAT"
SNAT_CHAIN = "EGRESS-ROUTER-SNAT"
MARK_CHAIN = "EGRESS-ROUTER-MARK"
IP_FORWARD = "net.ipv4.ip_forward"
#: IPv6 has no ip_forward: `all.forwarding` turns forwarding on for every interface (and makes them routers, so
#: they ignore router advertisements; the router's routes are static).
IPV6_FORWARD = "net.ipv6.conf.all.forwarding"
FORWARDING = {IPV4: IP_FORWARD, IPV6: IPV6_FORWARD}
#: Proxy modes: the unprivileged proxy container may listen on any port of its own pod, 80 included,
#: as OpenShift's proxy manifests ask; the setting only exists in the pod's network namespace.
UNPRIVILEGED_PORTS = "net.ipv4.ip_unprivileged_port_start"
#: Loose reverse-path filtering on eth0: a client on another node arrives on eth0 while the main table routes its
#: address through the egress interface, which strict filtering (RHEL's default) would drop. IPv4 only: IPv6 has
#: no such sysctl (its reverse-path check is a netfilter match, which a fresh pod does not have).
RP_FILTER = f"net.ipv4.conf.{CLUSTER_INTERFACE}.rp_filter"
#: Router advertisements on the node's network would otherwise give the egress interface a SLAAC address and a default
#: route (accept_ra is 1 by default and only ignored where IPv6 forwarding is on): an address nobody whitelisted, and an
#: IPv6 default route on an IPv4-only router that the proxies take as IPv6 being served. Off in every mode.
NO_ROUTER_ADVERTISEMENTS = (("accept_ra", "0"), ("autoconf", "0"))
#: Duplicate address detection is IPv6's claim check: where the egress interface has it off (accept_dad=0, or
#: dad_transmits=0, as a node whose defaults a new namespace inherits may have), a router would take an address
#: another host holds without a word. Raised to 1 only where lower; 2 (also off on a duplicate link-local) is kept.
DAD_AT_LEAST = (("accept_dad", 1), ("dad_transmits", 1))

#: Connections that arrive on eth0 carry this conntrack mark; their reply packets get it as packet mark
#: and a policy rule routes them by REPLY_TABLE, which holds eth0's own routes as init found them.
REPLY_MARK = 0x400000
REPLY_TABLE = 201
REPLY_RULE_PRIORITY = 1000
#: Routes init adds on eth0 (nameservers, EGRESS_CLUSTER_NETWORKS, REPLY_TABLE) carry this protocol
#: number, so a later run knows which ones are its own.
ROUTE_PROTO = 201


@dataclass(frozen=True)
class XtRule:
    """One rule in one of our chains, in the terms iptables uses (matches and target as option lists)."""

    chain: str
    target: str
    target_options: tuple[tuple[str, str], ...] = ()
    in_interface: str | None = None
    out_interface: str | None = None
    protocol: str | None = None
    matches: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    def iptables_args(self) -> str:
        parts = [f"-A {self.chain}"]
        if self.in_interface:
            parts.append(f"-i {self.in_interface}")
        if self.out_interface:
            parts.append(f"-o {self.out_interface}")
        if self.protocol:
            parts.append(f"-p {self.protocol}")
        for name, options in self.matches:
            parts.append(" ".join([f"-m {name}", *(f"--{key} {value}" for key, value in options)]))
        parts.append(" ".join([f"-j {self.target}", *(f"--{key} {value}" for key, value in self.target_options)]))
        return " ".join(parts)

    def as_dict(self) -> dict[str, object]:
        """python-iptables' `iptc.easy` form, which the NAT edge encodes and compares."""
        rule: dict[str, object] = {}
        if self.in_interface:
            rule["in-interface"] = self.in_interface
        if self.out_interface:
            rule["out-interface"] = self.out_interface
        if self.protocol:
            rule["protocol"] = self.protocol
        for name, options in self.matches:
            rule[name] = dict(options)
        rule["target"] = {self.target: dict(self.target_options)} if self.target_options else self.target
        return rule


@dataclass(frozen=True)
class ChainSet:
    """Chains the router owns in one iptables table, each jumped to first from its built-in chains.

    `family` is "ipv4" or "ipv6": iptables or ip6tables, nftables' `ip` or `ip6` table.
    """

    table: str
    chains: tuple[tuple[str, tuple[str, ...]], ...]
    rules: tuple[XtRule, ...]
    family: str = IPV4

    def render(self) -> str:
        """Our part of the table as `iptables-save -t <table>` (or ip6tables-save) would show it."""
        lines = ["# IPv6: ip6tables-save form"] if self.family == IPV6 else []
        lines.append(f"*{self.table}")
        lines += [f":{chain} - [0:0]" for chain, _ in self.chains]
        lines += [f"-I {parent} 1 -j {chain}" for chain, parents in self.chains for parent in parents]
        lines += [rule.iptables_args() for rule in self.rules]
        lines.append("COMMIT")
        return "\n".join(lines)


NAT_CHAINS = ((DNAT_CHAIN, ("PREROUTING",)), (SNAT_CHAIN, ("POSTROUTING",)))
MARK_CHAINS = ((MARK_CHAIN, ("PREROUTING", "OUTPUT")),)


@dataclass(frozen=True)
class Route:
    dst: str  # "default" or an address/prefix
    gateway: IPAddress | None = None
    scope_link: bool = False

    def describe(self, interface: str) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        scope = " scope link" if self.scope_link else ""
        return f"{self.dst}{via} dev {interface}{scope}"


@dataclass(frozen=True)
class FamilyPlan:
    """What one address family of the router gets: its address, routes, reply marks and NAT."""

    family: str
    address: IPInterface
    gateway: IPAddress
    routes: tuple[Route, ...]
    nat: ChainSet | None  # None: leave NAT alone (proxy modes)
    marks: ChainSet
    cluster_networks: tuple[IPNetwork, ...] = ()
    nameservers: tuple[IPAddress, ...] = ()

    @property
    def chain_sets(self) -> tuple[ChainSet, ...]:
        """In the order init commits them: the reply marks, then NAT."""
        return (self.marks,) if self.nat is None else (self.marks, self.nat)


@dataclass(frozen=True)
class NetworkPlan:
    interface: str
    create_macvlan: MacvlanRequest | None
    families: tuple[FamilyPlan, ...]  # IPv4 first; one or both
    sysctls: tuple[tuple[str, str], ...]
    probe: ProbeTiming = DEFAULT_TIMING  # ARP probes for the IPv4 address before it is added
    #: The egress interface's own settings, written before it comes up or gets an address (skipped where it has no IPv6)
    egress_sysctls: tuple[tuple[str, str], ...] = ()
    #: Settings of the egress interface raised to at least a value before an IPv6 address is added (DAD_AT_LEAST)
    egress_minimums: tuple[tuple[str, int], ...] = ()

    @property
    def forwarding(self) -> bool:
        return any((key, "1") in self.sysctls for key in FORWARDING.values())

    @property
    def nat_rules(self) -> tuple[XtRule, ...] | None:
        """Every family's NAT rules; None when NAT is left alone (proxy modes)."""
        sets = [f.nat for f in self.families if f.nat is not None]
        return None if not sets else tuple(rule for chains in sets for rule in chains.rules)

    @property
    def chain_sets(self) -> tuple[ChainSet, ...]:
        return tuple(chains for family in self.families for chains in family.chain_sets)

    @property
    def nameservers(self) -> tuple[IPAddress, ...]:
        """The nameservers the plan was made with, of the families it serves."""
        return tuple(n for family in self.families for n in family.nameservers)


def build_plan(settings: InitSettings, nameservers: tuple[IPAddress, ...] = ()) -> NetworkPlan:
    """`nameservers`: the pod's /etc/resolv.conf ones; those eth0 reaches now stay on eth0 (each with its family)."""
    families = []
    for family, source in settings.sources.items():
        gateway = settings.gateways.get(family)
        assert gateway is not None  # load_init_settings refuses a source without a gateway of its family
        host = f"{gateway}/{gateway.max_prefixlen}"
        families.append(
            FamilyPlan(
                family=family,
                address=source.interface,
                gateway=gateway,
                routes=(Route(host, scope_link=family == IPV4), Route("default", gateway=gateway)),
                nat=nat_chains(settings, family) if settings.mode.installs_nat else None,
                marks=mark_chains(family),
                cluster_networks=tuple(n for n in settings.cluster_networks if family_of(n) == family),
                nameservers=tuple(n for n in nameservers if family_of(n) == family),
            )
        )
    sysctls: list[tuple[str, str]] = []
    if settings.mode.installs_nat:
        sysctls += [(FORWARDING[f.family], "1") for f in families]
    else:
        sysctls.append((UNPRIVILEGED_PORTS, "0"))  # one setting for both families, despite its name
    if settings.sources.ipv4 is not None:
        sysctls.append((RP_FILTER, "2"))
    return NetworkPlan(
        interface=settings.interface,
        create_macvlan=settings.macvlan,
        families=tuple(families),
        sysctls=tuple(sysctls),
        probe=ProbeTiming.lasting(settings.probe_time),
        egress_sysctls=ipv6_interface_sysctls(settings.interface, NO_ROUTER_ADVERTISEMENTS),
        egress_minimums=ipv6_interface_sysctls(settings.interface, DAD_AT_LEAST) if settings.sources.ipv6 is not None else (),
    )


def sysctl_name(interface: str) -> str:
    """An interface name as a part of a dotted sysctl key: sysctl(8) writes its dots as slashes (`eth0/100`)."""
    return interface.replace(".", "/")


def ipv6_interface_sysctls(interface: str, settings: tuple[tuple[str, V], ...]) -> tuple[tuple[str, V], ...]:
    return tuple((f"net.ipv6.conf.{sysctl_name(interface)}.{name}", value) for name, value in settings)


def dnat_target(address: IPAddress, port: int | None) -> str:
    """DNAT's --to-destination: an IPv6 address takes brackets when a port follows (`[2001:db8::5]:80`)."""
    if port is None:
        return str(address)
    return f"[{address}]:{port}" if isinstance(address, IPv6Address) else f"{address}:{port}"


def _dnat(to: str, protocol: str | None = None, port: int | None = None) -> XtRule:
    matches = ((protocol, (("dport", str(port)),)),) if protocol and port is not None else ()
    return XtRule(DNAT_CHAIN, "DNAT", (("to-destination", to),), in_interface=CLUSTER_INTERFACE, protocol=protocol, matches=matches)


def nat_rules_for(settings: InitSettings, family: str) -> tuple[XtRule, ...]:
    """One DNAT per port rule of `family` in list order; before the fallback, the metrics port returns untouched
    (probes and scrapes reach the pod itself); the fallback; then SNAT of all egress traffic."""
    return tuple(rule for rule, _ in labelled_nat_rules(settings, family))


def labelled_nat_rules(settings: InitSettings, family: str) -> tuple[tuple[XtRule, str], ...]:
    """One family's NAT rules, each with what it stands for in the metrics: its destination line, `metrics-port`, `snat`."""
    assert settings.destinations is not None
    source = settings.sources.get(family)
    assert source is not None
    rules: list[tuple[XtRule, str]] = []
    for rule in settings.destinations.rules_for(family):
        rules.append((_dnat(dnat_target(rule.address, rule.remote_port), rule.protocol, rule.local_port), str(rule.line_no)))
    fallback = settings.destinations.fallbacks.get(family)
    if fallback is not None:
        if settings.metrics_port is not None:
            keep = XtRule(
                DNAT_CHAIN,
                "RETURN",
                in_interface=CLUSTER_INTERFACE,
                protocol="tcp",
                matches=(("tcp", (("dport", str(settings.metrics_port)),)),),
            )
            rules.append((keep, "metrics-port"))
        rules.append((_dnat(str(fallback.address)), str(fallback.line_no)))
    rules.append((XtRule(SNAT_CHAIN, "SNAT", (("to-source", str(source.ip)),), out_interface=settings.interface), "snat"))
    return tuple(rules)


def nat_chains(settings: InitSettings, family: str) -> ChainSet:
    return ChainSet("nat", NAT_CHAINS, nat_rules_for(settings, family), family)


def mark_chains(family: str = IPV4) -> ChainSet:
    """Mark what arrives on eth0 in conntrack; give the mark to that connection's replies, so they route by REPLY_TABLE.

    Only reply-direction packets get the packet mark: a DNATed connection's own packets must still leave
    through the egress interface, and its replies (arriving there) go back out of eth0.
    """
    mark = f"{REPLY_MARK:#x}/{REPLY_MARK:#x}"
    arrived = XtRule(
        MARK_CHAIN, "CONNMARK", (("set-xmark", mark),), in_interface=CLUSTER_INTERFACE, matches=(("conntrack", (("ctstate", "NEW"),)),)
    )
    reply = XtRule(
        MARK_CHAIN, "MARK", (("set-xmark", mark),), matches=(("conntrack", (("ctdir", "REPLY"),)), ("connmark", (("mark", mark),)))
    )
    return ChainSet("mangle", MARK_CHAINS, (arrived, reply), family)


def egress_interface_lines(plan: NetworkPlan) -> list[str]:
    """The egress interface's own settings: router advertisements off, duplicate address detection on."""
    lines = [f"sysctl {key}={value} (before {plan.interface} comes up; skipped if it has no IPv6)" for key, value in plan.egress_sysctls]
    return lines + [f"sysctl {key}>={least} (duplicate address detection: IPv6's claim check)" for key, least in plan.egress_minimums]


def flush_line(plan: NetworkPlan) -> str:
    return f"flush  what router advertisements gave {plan.interface} before: proto ra or expiring routes, SLAAC addresses (last)"


def render_plan(plan: NetworkPlan, show: Callable[[ChainSet], str] = ChainSet.render) -> str:
    """What `init` would do, for people (unit-test mode) and for diffs; `show` writes the rules in the NAT backend's syntax."""
    lines = []
    if plan.create_macvlan:
        m = plan.create_macvlan
        lines.append(
            f"link   {plan.interface}: use it if present, else create a macvlan ({m.mode}) on {m.master} in {m.host_netns}"
            " and move it into this pod"
        )
    else:
        lines.append(f"link   {plan.interface}: must already exist in this pod")
    lines += egress_interface_lines(plan)
    lasting = render_duration(round(plan.probe.average, 3))
    both = len(plan.families) > 1
    for f in plan.families:
        if f.family == IPV4:
            lines.append(
                f"probe  ARP for {f.address.ip} on {plan.interface}, {plan.probe.probes} probes in ~{lasting}"
                " (unless it is on it already): another host answering stops init, nothing changed"
            )
            lines.append(f"addr   {f.address} dev {plan.interface} (only {'IPv4 ' if both else ''}address on it)")
        else:
            lines.append(
                f"addr   {f.address} dev {plan.interface} (only global IPv6 address on it; waits until duplicate address detection"
                " finds no other host using it)"
            )
    hop = f"<{CLUSTER_INTERFACE}'s next hop>"
    for f in plan.families:
        name = f"{FAMILY_NAMES[f.family]} " if f.family == IPV6 else ""
        lines.append(
            f"table  {REPLY_TABLE}: {CLUSTER_INTERFACE}'s {name}routes as found, its default route via {hop} included (kept for replies)"
        )
        lines.append(
            f"rule   {'-6 ' if f.family == IPV6 else ''}fwmark {REPLY_MARK:#x}/{REPLY_MARK:#x} lookup {REPLY_TABLE} priority"
            f" {REPLY_RULE_PRIORITY} (replies to connections that arrived on {CLUSTER_INTERFACE} leave through {CLUSTER_INTERFACE})"
        )
    for f in plan.families:
        for network in f.cluster_networks:
            lines.append(f"route  {network} via {hop} dev {CLUSTER_INTERFACE} (EGRESS_CLUSTER_NETWORKS)")
        for nameserver in f.nameservers:
            lines.append(
                f"route  {nameserver}/{nameserver.max_prefixlen} via {hop} dev {CLUSTER_INTERFACE}"
                f" (nameserver in /etc/resolv.conf, if {CLUSTER_INTERFACE} reaches it now)"
            )
    for f in plan.families:
        for route in f.routes:
            which = f"current {'IPv6 ' if f.family == IPV6 else ''}default route"
            note = f" (replaces the {which})" if route.dst == "default" else ""
            lines.append(f"route  {route.describe(plan.interface)}{note}")
    for key, value in plan.sysctls:
        lines.append(f"sysctl {key}={value}")
    lines += [show(f.marks) for f in plan.families]
    if all(f.nat is None for f in plan.families):
        lines.append("nat    none (proxy mode: the proxy's own connections leave from the egress address)")
    else:
        lines += [show(f.nat) for f in plan.families if f.nat is not None]
    lines += [flush_line(plan)] if plan.egress_sysctls else []
    return "\n".join(lines)
