"""EGRESS_CLUSTER_NETWORKS: CIDRs the pod's own connections reach through eth0 (cluster and Service networks), IPv4 or IPv6."""

from __future__ import annotations

from ipaddress import ip_network

from egress_router.config.addresses import IPNetwork, parse_ip
from egress_router.config.errors import Collector, Problem

VARIABLE = "EGRESS_CLUSTER_NETWORKS"


def network_problem(text: str) -> IPNetwork | str:
    """The network, or why `text` is not a usable one (host bits, /0, not an address)."""
    address_text, slash, prefix_text = text.partition("/")
    address = parse_ip(address_text)
    if isinstance(address, str):
        return address
    bits = address.max_prefixlen
    if not slash:
        example = "addr::/len, e.g. fd00:10:96::/112" if address.version == 6 else "A.B.C.D/len, e.g. 172.30.0.0/16"
        return f"not a CIDR (expected {example})"
    if not prefix_text.isascii() or not prefix_text.isdigit() or len(prefix_text) > len(str(bits)) or int(prefix_text) > bits:
        return f"invalid prefix length (must be 1-{bits})"
    if int(prefix_text) == 0:
        return "a /0 network would send everything through eth0 instead of the egress interface"
    network = ip_network(f"{address}/{int(prefix_text)}", strict=False)
    if network.network_address != address:
        return f"has host bits set (did you mean {network}?)"
    return network


def parse_cluster_networks(text: str | None) -> tuple[IPNetwork, ...]:
    """Comma- or space-separated CIDRs; every bad one is reported, duplicates are folded."""
    if text is None or not text.strip():
        return ()
    found = Collector()
    networks: list[IPNetwork] = []
    for item in text.replace(",", " ").split():
        parsed = network_problem(item)
        if isinstance(parsed, str):
            found.add(Problem(VARIABLE, parsed, item))
        elif parsed not in networks:
            networks.append(parsed)
    found.raise_if_any()
    return tuple(networks)
