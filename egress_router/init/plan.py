"""The network an `init` run should leave behind, as plain data.

`unit-test` mode prints it, `init` applies it; nothing here touches the system.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from egress_router.config.init_settings import InitSettings, MacvlanRequest
from egress_router.config.values import render_duration
from egress_router.init.claim import DEFAULT_TIMING, ProbeTiming

CLUSTER_INTERFACE = "eth0"
DNAT_CHAIN = "EGRESS-ROUTER-DNAT"
SNAT_CHAIN = "EGRESS-ROUTER-SNAT"
MARK_CHAIN = "EGRESS-ROUTER-MARK"
IP_FORWARD = "net.ipv4.ip_forward"
#: Proxy modes: the unprivileged proxy container may listen on any port of its own pod, 80 included,
#: as OpenShift's proxy manifests ask; the setting only exists in the pod's network namespace.
UNPRIVILEGED_PORTS = "net.ipv4.ip_unprivileged_port_start"
#: Loose reverse-path filtering on eth0: a client on another node arrives on eth0 while the main table
#: routes its address through the egress interface, which strict filtering (RHEL's default) would drop.
RP_FILTER = f"net.ipv4.conf.{CLUSTER_INTERFACE}.rp_filter"

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
    family: str = "ipv4"

    def render(self) -> str:
        """Our part of the table as `iptables-save -t <table>` would show it."""
        lines = [f"*{self.table}"]
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
    gateway: IPv4Address | None = None
    scope_link: bool = False

    def describe(self, interface: str) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        scope = " scope link" if self.scope_link else ""
        return f"{self.dst}{via} dev {interface}{scope}"


@dataclass(frozen=True)
class NetworkPlan:
    interface: str
    create_macvlan: MacvlanRequest | None
    address: IPv4Interface
    gateway: IPv4Address
    routes: tuple[Route, ...]
    sysctls: tuple[tuple[str, str], ...]
    nat: ChainSet | None  # None: leave NAT alone (proxy modes)
    marks: ChainSet
    cluster_networks: tuple[IPv4Network, ...] = ()
    nameservers: tuple[IPv4Address, ...] = ()
    probe: ProbeTiming = DEFAULT_TIMING  # ARP probes for the address before it is added

    @property
    def forwarding(self) -> bool:
        return (IP_FORWARD, "1") in self.sysctls

    @property
    def nat_rules(self) -> tuple[XtRule, ...] | None:
        return None if self.nat is None else self.nat.rules


def build_plan(settings: InitSettings, nameservers: tuple[IPv4Address, ...] = ()) -> NetworkPlan:
    """`nameservers`: the pod's /etc/resolv.conf ones; those eth0 reaches now stay on eth0."""
    gateway_route = Route(f"{settings.gateway}/32", scope_link=True)
    default_route = Route("default", gateway=settings.gateway)
    nat = None
    if settings.mode.installs_nat:
        assert settings.destinations is not None
        nat = nat_chains(settings)
    own = ((IP_FORWARD, "1"),) if nat is not None else ((UNPRIVILEGED_PORTS, "0"),)
    return NetworkPlan(
        interface=settings.interface,
        create_macvlan=settings.macvlan,
        address=settings.source.interface,
        gateway=settings.gateway,
        routes=(gateway_route, default_route),
        sysctls=(*own, (RP_FILTER, "2")),
        nat=nat,
        marks=mark_chains(),
        cluster_networks=settings.cluster_networks,
        nameservers=nameservers,
        probe=ProbeTiming.lasting(settings.probe_time),
    )


def _dnat(to: str, protocol: str | None = None, port: int | None = None) -> XtRule:
    matches = ((protocol, (("dport", str(port)),)),) if protocol and port is not None else ()
    return XtRule(DNAT_CHAIN, "DNAT", (("to-destination", to),), in_interface=CLUSTER_INTERFACE, protocol=protocol, matches=matches)


def nat_rules_for(settings: InitSettings) -> tuple[XtRule, ...]:
    """One DNAT per port rule in list order; before the fallback, the metrics port returns untouched (probes
    and scrapes reach the pod itself); the fallback; then SNAT of all egress traffic."""
    return tuple(rule for rule, _ in labelled_nat_rules(settings))


def labelled_nat_rules(settings: InitSettings) -> tuple[tuple[XtRule, str], ...]:
    """The NAT rules, each with what it stands for in the metrics: its destination line, `metrics-port`, `snat`."""
    assert settings.destinations is not None
    rules: list[tuple[XtRule, str]] = []
    for rule in settings.destinations.rules:
        to = f"{rule.address}:{rule.remote_port}" if rule.remote_port else str(rule.address)
        rules.append((_dnat(to, rule.protocol, rule.local_port), str(rule.line_no)))
    if settings.destinations.fallback is not None:
        if settings.metrics_port is not None:
            keep = XtRule(
                DNAT_CHAIN,
                "RETURN",
                in_interface=CLUSTER_INTERFACE,
                protocol="tcp",
                matches=(("tcp", (("dport", str(settings.metrics_port)),)),),
            )
            rules.append((keep, "metrics-port"))
        rules.append((_dnat(str(settings.destinations.fallback)), str(settings.destinations.fallback_line)))
    rules.append((XtRule(SNAT_CHAIN, "SNAT", (("to-source", str(settings.source.ip)),), out_interface=settings.interface), "snat"))
    return tuple(rules)


def nat_chains(settings: InitSettings) -> ChainSet:
    return ChainSet("nat", NAT_CHAINS, nat_rules_for(settings))


def mark_chains() -> ChainSet:
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
    return ChainSet("mangle", MARK_CHAINS, (arrived, reply))


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
    lasting = render_duration(round(plan.probe.average, 3))
    lines.append(
        f"probe  ARP for {plan.address.ip} on {plan.interface}, {plan.probe.probes} probes in ~{lasting}"
        " (unless it is on it already): another host answering stops init, nothing changed"
    )
    lines.append(f"addr   {plan.address} dev {plan.interface} (only address on it)")
    hop = f"<{CLUSTER_INTERFACE}'s next hop>"
    lines.append(f"table  {REPLY_TABLE}: {CLUSTER_INTERFACE}'s routes as found, its default route via {hop} included (kept for replies)")
    lines.append(
        f"rule   fwmark {REPLY_MARK:#x}/{REPLY_MARK:#x} lookup {REPLY_TABLE} priority {REPLY_RULE_PRIORITY}"
        f" (replies to connections that arrived on {CLUSTER_INTERFACE} leave through {CLUSTER_INTERFACE})"
    )
    for network in plan.cluster_networks:
        lines.append(f"route  {network} via {hop} dev {CLUSTER_INTERFACE} (EGRESS_CLUSTER_NETWORKS)")
    for nameserver in plan.nameservers:
        lines.append(
            f"route  {nameserver}/32 via {hop} dev {CLUSTER_INTERFACE}"
            f" (nameserver in /etc/resolv.conf, if {CLUSTER_INTERFACE} reaches it now)"
        )
    for route in plan.routes:
        note = " (replaces the current default route)" if route.dst == "default" else ""
        lines.append(f"route  {route.describe(plan.interface)}{note}")
    for key, value in plan.sysctls:
        lines.append(f"sysctl {key}={value}")
    lines.append(show(plan.marks))
    if plan.nat is None:
        lines.append("nat    none (proxy mode: the proxy's own connections leave from the egress address)")
    else:
        lines.append(show(plan.nat))
    return "\n".join(lines)
