"""EGRESS_CLUSTER_NETWORKS: CIDRs the pod's own connections reach through eth0 (cluster and Service networks)."""

from __future__ import annotations

from ipaddress import IPv4Network

from egress_router.config.addresses import ipv4_problem
from egress_router.config.errors import Collector, Problem

VARIABLE = "EGRESS_CLUSTER_NETWORKS"


def network_problem(text: str) -> IPv4Network | str:
    """The network, or why `text` is not a usable one (host bits, /0, non-dotted-quad)."""
    address_text, slash, prefix_text = text.partition("/")
    problem = ipv4_problem(address_text)
    if problem:
        return problem
    if not slash:
        return "not a CIDR (expected A.B.C.D/len, e.g. 172.30.0.0/16)"
    if not prefix_text.isascii() or not prefix_text.isdigit() or len(prefix_text) > 2 or int(prefix_text) > 32:
        return "invalid prefix length (must be 1-32)"
    if int(prefix_text) == 0:
        return "a /0 network would send everything through eth0 instead of the egress interface"
    network = IPv4Network(text, strict=False)
    if str(network.network_address) != address_text:
        return f"has host bits set (did you mean {network}?)"
    return network


def parse_cluster_networks(text: str | None) -> tuple[IPv4Network, ...]:
    """Comma- or space-separated CIDRs; every bad one is reported, duplicates are folded."""
    if text is None or not text.strip():
        return ()
    found = Collector()
    networks: list[IPv4Network] = []
    for item in text.replace(",", " ").split():
        parsed = network_problem(item)
        if isinstance(parsed, str):
            found.add(Problem(VARIABLE, parsed, item))
        elif parsed not in networks:
            networks.append(parsed)
    found.raise_if_any()
    return tuple(networks)
