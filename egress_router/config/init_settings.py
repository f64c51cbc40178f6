"""Everything `egress-router init` needs, validated together before any change is made."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from egress_router.config.addresses import Source, parse_gateway, parse_source
from egress_router.config.cluster_networks import VARIABLE as CLUSTER_NETWORKS
from egress_router.config.cluster_networks import parse_cluster_networks
from egress_router.config.destinations import Destinations, parse_destinations
from egress_router.config.errors import Collector, ConfigError, Problem


class Mode(enum.Enum):
    INIT = "init"
    LEGACY = "legacy"
    HTTP_PROXY = "http-proxy"
    DNS_PROXY = "dns-proxy"
    UNIT_TEST = "unit-test"

    @property
    def installs_nat(self) -> bool:
        """The proxy modes only need the network: their own sockets leave from EGRESS_SOURCE."""
        return self not in (Mode.HTTP_PROXY, Mode.DNS_PROXY)


MACVLAN_MODES = ("bridge", "private", "vepa", "passthru")


@dataclass(frozen=True)
class MacvlanRequest:
    """Create the egress interface ourselves: a macvlan on `master` in the node's namespace."""

    master: str
    mode: str
    host_netns: str


@dataclass(frozen=True)
class InitSettings:
    mode: Mode
    source: Source
    gateway: IPv4Address
    destinations: Destinations | None
    interface: str
    macvlan: MacvlanRequest | None
    debug: bool
    cluster_networks: tuple[IPv4Network, ...] = ()


def interface_name_problem(name: str) -> str | None:
    """The kernel's own rules for interface names (IFNAMSIZ and dev_valid_name)."""
    if not name:
        return "is empty"
    if len(name.encode()) > 15:
        return "is longer than 15 bytes"
    if name in (".", "..") or any(ch in name for ch in "/:") or any(ch.isspace() for ch in name):
        return "is not a valid interface name (no '/', ':' or spaces)"
    return None


def parse_mode(text: str | None) -> Mode:
    value = (text or "legacy").strip()
    for mode in Mode:
        if mode.value == value:
            return mode
    choices = ", ".join(m.value for m in Mode)
    raise ConfigError.single("EGRESS_ROUTER_MODE", f"unknown mode (must be one of {choices})", value)


def load_init_settings(
    *,
    source: str | None,
    gateway: str | None,
    destination: str | None,
    mode: str | None,
    interface: str | None = None,
    macvlan_master: str | None = None,
    macvlan_mode: str | None = None,
    host_netns: str | None = None,
    debug: str | None = None,
    cluster_networks: str | None = None,
) -> InitSettings:
    """Validate every variable and raise one ConfigError listing all problems."""
    found = Collector()
    parsed = found.gather(
        {
            "mode": lambda: parse_mode(mode),
            "source": lambda: parse_source(source),
            "gateway": lambda: parse_gateway(gateway),
            "cluster_networks": lambda: parse_cluster_networks(cluster_networks),
        }
    )
    parsed_mode: Mode | None = parsed.get("mode")
    parsed_source: Source | None = parsed.get("source")
    parsed_gateway: IPv4Address | None = parsed.get("gateway")
    parsed_destinations: Destinations | None = None
    if parsed_source and parsed_gateway and parsed_source.ip == parsed_gateway:
        found.add(Problem("EGRESS_GATEWAY", "must differ from EGRESS_SOURCE", str(parsed_gateway)))
    networks: tuple[IPv4Network, ...] = parsed.get("cluster_networks", ())
    for network in networks:
        for name, address in (("EGRESS_SOURCE", parsed_source and parsed_source.ip), ("EGRESS_GATEWAY", parsed_gateway)):
            if address and address in network:
                found.add(Problem(CLUSTER_NETWORKS, f"contains {name} {address}, which must stay on the egress interface", str(network)))
    if parsed_mode is None or parsed_mode.installs_nat:
        parsed_destinations = found.gather({"destinations": lambda: parse_destinations(destination)}).get("destinations")
    ifname = (interface or "macvlan0").strip()
    reason = interface_name_problem(ifname)
    if reason:
        found.add(Problem("EGRESS_INTERFACE", reason, ifname))
    if ifname == "eth0":
        found.add(Problem("EGRESS_INTERFACE", "eth0 is the pod's cluster interface; the egress interface must be another one", ifname))
    kind = (macvlan_mode or "bridge").strip().lower()
    if kind not in MACVLAN_MODES:
        found.add(Problem("EGRESS_MACVLAN_MODE", f"unknown macvlan mode (must be one of {', '.join(MACVLAN_MODES)})", kind))
    request = None
    if macvlan_master and macvlan_master.strip():
        master = macvlan_master.strip()
        reason = interface_name_problem(master)
        if reason:
            found.add(Problem("EGRESS_MACVLAN_MASTER", reason, master))
        netns = (host_netns or "/proc/1/ns/net").strip()
        if not netns.startswith("/"):
            found.add(Problem("EGRESS_HOST_NETNS", "must be an absolute path to a network namespace file", netns))
        request = MacvlanRequest(master, kind, netns)
    found.raise_if_any()
    assert parsed_mode and parsed_source and parsed_gateway
    return InitSettings(
        mode=parsed_mode,
        source=parsed_source,
        gateway=parsed_gateway,
        destinations=parsed_destinations,
        interface=ifname,
        macvlan=request,
        debug=bool(debug and debug.strip()),
        cluster_networks=networks,
    )
