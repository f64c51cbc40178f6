"""EGRESS_SOURCE and EGRESS_GATEWAY: IPv4 addresses an administrator reserved on the node's network."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address

from egress_router.config.errors import ConfigError

#: Any one IP address, as `ipaddress` gives it; the one alias every module uses.
IPAddress = IPv4Address | IPv6Address


def ipv4_problem(text: str) -> str | None:
    """Why `text` is not a dotted-quad IPv4 address, or None when it is one."""
    parts = text.split(".")
    if len(parts) != 4:
        return "not an IPv4 address (expected A.B.C.D)"
    for part in parts:
        if not part.isascii() or not part.isdigit():
            return f"not an IPv4 address (octet {part!r} is not a number)"
        if len(part) > 1 and part.startswith("0"):
            return f"not an IPv4 address (octet {part!r} has a leading zero, which some tools read as octal)"
        if int(part) > 255:
            return f"not an IPv4 address (octet {part} out of range 0-255)"
    return None


def parse_ipv4(text: str) -> IPv4Address | str:
    """The address, or the reason it is not one (so callers can add variable and line)."""
    problem = ipv4_problem(text)
    return problem if problem else IPv4Address(text)


def unusable_host_reason(address: IPv4Address) -> str | None:
    """Addresses that can never be a host on the node's network."""
    if address.is_unspecified:
        return "the unspecified address cannot be used"
    if address.is_loopback:
        return "a loopback address cannot be used"
    if address.is_multicast:
        return "a multicast address cannot be used"
    if address == IPv4Address("255.255.255.255"):
        return "the broadcast address cannot be used"
    if address.is_reserved:
        return "a reserved (class E) address cannot be used"
    return None


@dataclass(frozen=True)
class Source:
    """The egress address; `has_prefix` tells whether the kernel gets a subnet route."""

    interface: IPv4Interface
    has_prefix: bool

    @property
    def ip(self) -> IPv4Address:
        return self.interface.ip


def parse_source(text: str | None, variable: str = "EGRESS_SOURCE") -> Source:
    if text is None or not text.strip():
        raise ConfigError.single(variable, "unspecified (set it to the reserved egress IPv4 address, e.g. 192.168.12.99)")
    value = text.strip()
    address_text, slash, prefix_text = value.partition("/")
    address = parse_ipv4(address_text)
    if isinstance(address, str):
        raise ConfigError.single(variable, address, value)
    prefix = 32
    if slash:
        if not prefix_text.isascii() or not prefix_text.isdigit() or int(prefix_text) > 32 or len(prefix_text) > 2:
            raise ConfigError.single(variable, "invalid prefix length (must be 0-32)", value)
        prefix = int(prefix_text)
        if prefix == 0:
            raise ConfigError.single(variable, "prefix length 0 would put the whole Internet on-link", value)
    reason = unusable_host_reason(address)
    if reason:
        raise ConfigError.single(variable, reason, value)
    interface = IPv4Interface(f"{address}/{prefix}")
    if prefix <= 30 and address in (interface.network.network_address, interface.network.broadcast_address):
        kind = "network" if address == interface.network.network_address else "broadcast"
        raise ConfigError.single(variable, f"{address} is the {kind} address of {interface.network}", value)
    return Source(interface, bool(slash))


def parse_gateway(text: str | None, variable: str = "EGRESS_GATEWAY") -> IPv4Address:
    if text is None or not text.strip():
        raise ConfigError.single(variable, "unspecified (set it to the next hop on the node's network, e.g. 192.168.12.1)")
    value = text.strip()
    address = parse_ipv4(value)
    if isinstance(address, str):
        raise ConfigError.single(variable, address, value)
    reason = unusable_host_reason(address)
    if reason:
        raise ConfigError.single(variable, reason, value)
    return address
