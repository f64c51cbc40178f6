"""The network an `init` run should leave behind, as plain data.

`unit-test` mode prints it, `init` applies it; nothing here touches the system.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface

from egress_router.config.init_settings import InitSettings, MacvlanRequest

CLUSTER_INTERFACE = "eth0"
DNAT_CHAIN = "EGRESS-ROUTER-DNAT"
SNAT_CHAIN = "EGRESS-ROUTER-SNAT"
IP_FORWARD = "net.ipv4.ip_forward"
#: Proxy modes: the unprivileged proxy container may listen on any port of its own pod, 80 included,
#: as OpenShift's proxy manifests ask; the setting only exists in the pod's network namespace.
UNPRIVILEGED_PORTS = "net.ipv4.ip_unprivileged_port_start"
#: Our chains and the built-in chain that jumps to each of them.
OWNED_CHAINS = ((DNAT_CHAIN, "PREROUTING"), (SNAT_CHAIN, "POSTROUTING"))


@dataclass(frozen=True)
class NatRule:
    """One rule in one of our chains, in the terms iptables uses."""

    chain: str
    target: str  # DNAT or SNAT
    to: str  # --to-destination / --to-source value
    in_interface: str | None = None
    out_interface: str | None = None
    protocol: str | None = None
    dport: int | None = None
    comment: str | None = None

    def iptables_args(self) -> str:
        parts = [f"-A {self.chain}"]
        if self.in_interface:
            parts.append(f"-i {self.in_interface}")
        if self.out_interface:
            parts.append(f"-o {self.out_interface}")
        if self.protocol:
            parts.append(f"-p {self.protocol}")
        if self.dport is not None:
            parts.append(f"-m {self.protocol} --dport {self.dport}")
        option = "--to-destination" if self.target == "DNAT" else "--to-source"
        parts.append(f"-j {self.target} {option} {self.to}")
        return " ".join(parts)


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
    nat_rules: tuple[NatRule, ...] | None  # None: leave NAT alone (proxy modes)

    @property
    def forwarding(self) -> bool:
        return (IP_FORWARD, "1") in self.sysctls


def build_plan(settings: InitSettings) -> NetworkPlan:
    gateway_route = Route(f"{settings.gateway}/32", scope_link=True)
    default_route = Route("default", gateway=settings.gateway)
    nat_rules = None
    if settings.mode.installs_nat:
        assert settings.destinations is not None
        nat_rules = nat_rules_for(settings)
    return NetworkPlan(
        interface=settings.interface,
        create_macvlan=settings.macvlan,
        address=settings.source.interface,
        gateway=settings.gateway,
        routes=(gateway_route, default_route),
        sysctls=((IP_FORWARD, "1"),) if nat_rules is not None else ((UNPRIVILEGED_PORTS, "0"),),
        nat_rules=nat_rules,
    )


def nat_rules_for(settings: InitSettings) -> tuple[NatRule, ...]:
    """One DNAT per port rule in list order, the fallback last, then SNAT of all egress traffic."""
    assert settings.destinations is not None
    rules: list[NatRule] = []
    for rule in settings.destinations.rules:
        to = f"{rule.address}:{rule.remote_port}" if rule.remote_port else str(rule.address)
        rules.append(NatRule(DNAT_CHAIN, "DNAT", to, in_interface=CLUSTER_INTERFACE, protocol=rule.protocol, dport=rule.local_port))
    if settings.destinations.fallback is not None:
        rules.append(NatRule(DNAT_CHAIN, "DNAT", str(settings.destinations.fallback), in_interface=CLUSTER_INTERFACE))
    rules.append(NatRule(SNAT_CHAIN, "SNAT", str(settings.source.ip), out_interface=settings.interface))
    return tuple(rules)


def render_iptables_save(rules: tuple[NatRule, ...]) -> str:
    """The NAT rules as `iptables-save -t nat` would show our part of the table."""
    lines = ["*nat"]
    lines += [f":{chain} - [0:0]" for chain, _ in OWNED_CHAINS]
    lines += [f"-I {parent} 1 -j {chain}" for chain, parent in OWNED_CHAINS]
    lines += [rule.iptables_args() for rule in rules]
    lines.append("COMMIT")
    return "\n".join(lines)


def render_plan(plan: NetworkPlan) -> str:
    """What `init` would do, for people (unit-test mode) and for diffs."""
    lines = []
    if plan.create_macvlan:
        m = plan.create_macvlan
        lines.append(
            f"link   {plan.interface}: use it if present, else create a macvlan ({m.mode}) on {m.master} in {m.host_netns} and move it into this pod"
        )
    else:
        lines.append(f"link   {plan.interface}: must already exist in this pod")
    lines.append(f"addr   {plan.address} dev {plan.interface} (only address on it)")
    for route in plan.routes:
        note = " (replaces the current default route)" if route.dst == "default" else ""
        lines.append(f"route  {route.describe(plan.interface)}{note}")
    for key, value in plan.sysctls:
        lines.append(f"sysctl {key}={value}")
    if plan.nat_rules is None:
        lines.append("nat    none (proxy mode: the proxy's own connections leave from the egress address)")
    else:
        lines.append(render_iptables_save(plan.nat_rules))
    return "\n".join(lines)
