"""EGRESS_SOURCE and EGRESS_GATEWAY: addresses an administrator reserved on the node's network, IPv4, IPv6 or one of each."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Generic, TypeVar

from egress_router.config.errors import ConfigError, Problem

#: Any one IP address, as `ipaddress` gives it; the one alias every module uses.
IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface
IPNetwork = IPv4Network | IPv6Network

IPV4 = "ipv4"
IPV6 = "ipv6"
#: Both families, in the order plans and messages list them.
FAMILIES = (IPV4, IPV6)
FAMILY_NAMES = {IPV4: "IPv4", IPV6: "IPv6"}


def family_of(address: IPAddress | IPNetwork | IPInterface) -> str:
    return IPV4 if address.version == 4 else IPV6


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


def parse_ipv6(text: str) -> IPv6Address | str:
    """The address, or the reason it is not one. A zone (`%eth0`) is refused: the egress interface is the zone."""
    if "%" in text:
        return "not an IPv6 address here (no %zone: the egress interface is implied)"
    if not text.isascii() or any(c.isspace() for c in text):
        return "not an IPv6 address (unexpected characters)"
    try:
        return IPv6Address(text)
    except ValueError as error:
        return f"not an IPv6 address ({error})"


def parse_ip(text: str) -> IPAddress | str:
    """IPv4 when there is no colon (with the IPv4 messages administrators know), else IPv6."""
    return parse_ipv6(text) if ":" in text else parse_ipv4(text)


def unusable_host_reason(address: IPAddress) -> str | None:
    """Addresses that can never be a host on the node's network."""
    if address.is_unspecified:
        return "the unspecified address cannot be used"
    if address.is_loopback:
        return "a loopback address cannot be used"
    if address.is_multicast:
        return "a multicast address cannot be used"
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return f"an IPv4-mapped address cannot be used (write {address.ipv4_mapped} instead)"
        if address.is_reserved:
            return "a reserved address (outside IPv6's unicast ranges) cannot be used"
        return None
    if address == IPv4Address("255.255.255.255"):
        return "the broadcast address cannot be used"
    if address.is_reserved:
        return "a reserved (class E) address cannot be used"
    return None


def source_address_problem(address: IPAddress) -> str | None:
    """Why `address` can never be an egress address, whatever its prefix (a pool checks each of its addresses so)."""
    reason = unusable_host_reason(address)
    if not reason and isinstance(address, IPv6Address) and address.is_link_local:
        reason = "a link-local address cannot be the egress address (it never leaves the link; use a global or ULA address)"
    return reason


def subnet_edges(network: IPNetwork) -> tuple[tuple[IPAddress, str], ...]:
    """The addresses of `network` no host may take, with their names: IPv4's network and broadcast addresses, IPv6's
    subnet-router anycast address. Host and point-to-point prefixes (/31, /32, /127, /128) have none."""
    if isinstance(network, IPv4Network) and network.prefixlen <= 30:
        return ((network.network_address, "network"), (network.broadcast_address, "broadcast"))
    if isinstance(network, IPv6Network) and network.prefixlen <= 126:
        return ((network.network_address, "subnet-router anycast"),)
    return ()


T = TypeVar("T")


@dataclass(frozen=True)
class PerFamily(Generic[T]):
    """At most one value per address family: what a dual-stack router has one of each."""

    ipv4: T | None = None
    ipv6: T | None = None

    def get(self, family: str) -> T | None:
        return self.ipv4 if family == IPV4 else self.ipv6

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(f for f in FAMILIES if self.get(f) is not None)

    def items(self) -> Iterator[tuple[str, T]]:
        for family in FAMILIES:
            value = self.get(family)
            if value is not None:
                yield family, value

    def values(self) -> tuple[T, ...]:
        return tuple(value for _, value in self.items())


@dataclass(frozen=True)
class Source:
    """One egress address; `has_prefix` tells whether the kernel gets a subnet route."""

    interface: IPInterface
    has_prefix: bool

    @property
    def ip(self) -> IPAddress:
        return self.interface.ip

    @property
    def family(self) -> str:
        return family_of(self.interface)


#: EGRESS_SOURCE: one address of each family the router serves.
Sources = PerFamily[Source]
#: EGRESS_GATEWAY: one next hop per family, each matching a source's family.
Gateways = PerFamily[IPAddress]


def _items(text: str) -> list[str]:
    """Comma-separated items, spaces around them allowed."""
    return [item.strip() for item in text.split(",")]


def _one_per_family(variable: str, parsed: list[tuple[str, T, str]], shown: Callable[[T], str]) -> PerFamily[T]:
    """Refuse two of one family (a pool comes later, issue 11); otherwise one value per family."""
    problems: list[Problem] = []
    first: dict[str, tuple[T, str]] = {}
    for family, value, text in parsed:
        if family in first:
            name = FAMILY_NAMES[family]
            problems.append(
                Problem(
                    variable,
                    f"two {name} addresses ({shown(first[family][0])} and {shown(value)}); give one address of each family"
                    " (IPv4 and IPv6), comma-separated",
                    text,
                )
            )
        else:
            first[family] = (value, text)
    if problems:
        raise ConfigError(problems)
    return PerFamily(*(first[f][0] if f in first else None for f in FAMILIES))


def _source(text: str, variable: str) -> Source:
    address_text, slash, prefix_text = text.partition("/")
    address = parse_ip(address_text)
    if isinstance(address, str):
        raise ConfigError.single(variable, address, text)
    bits = address.max_prefixlen
    prefix: int = bits
    if slash:
        if not prefix_text.isascii() or not prefix_text.isdigit() or len(prefix_text) > len(str(bits)) or int(prefix_text) > bits:
            raise ConfigError.single(variable, f"invalid prefix length (must be 0-{bits})", text)
        prefix = int(prefix_text)
        if prefix == 0:
            raise ConfigError.single(variable, "prefix length 0 would put the whole Internet on-link", text)
    reason = source_address_problem(address)
    if reason:
        raise ConfigError.single(variable, reason, text)
    interface: IPInterface = IPv4Interface(f"{address}/{prefix}") if address.version == 4 else IPv6Interface(f"{address}/{prefix}")
    for edge, kind in subnet_edges(interface.network):
        if address == edge:
            raise ConfigError.single(variable, f"{address} is the {kind} address of {interface.network}", text)
    return Source(interface, bool(slash))


def parse_sources(text: str | None, variable: str = "EGRESS_SOURCE") -> Sources:
    """One address, or one of each family comma-separated; every bad item is reported."""
    if text is None or not text.strip():
        raise ConfigError.single(
            variable,
            "unspecified (set it to the reserved egress address, e.g. 192.168.12.99; dual-stack: 192.168.12.99,2001:db8::99)",
        )
    problems: list[Problem] = []
    parsed: list[tuple[str, Source, str]] = []
    for item in _items(text.strip()):
        if not item:
            problems.append(Problem(variable, "empty item in the comma-separated list", text.strip()))
            continue
        try:
            source = _source(item, variable)
        except ConfigError as error:
            problems.extend(error.problems)
            continue
        parsed.append((source.family, source, item))
    if problems:
        raise ConfigError(problems)
    return _one_per_family(variable, parsed, lambda s: str(s.ip))


def _gateway(text: str, variable: str) -> IPAddress:
    address = parse_ip(text)
    if isinstance(address, str):
        raise ConfigError.single(variable, address, text)
    reason = unusable_host_reason(address)  # an IPv6 link-local next hop (fe80::1) is usual, and fine
    if reason:
        raise ConfigError.single(variable, reason, text)
    return address


def parse_gateways(text: str | None, variable: str = "EGRESS_GATEWAY") -> Gateways:
    if text is None or not text.strip():
        raise ConfigError.single(
            variable, "unspecified (set it to the next hop on the node's network, e.g. 192.168.12.1; dual-stack: 192.168.12.1,2001:db8::1)"
        )
    problems: list[Problem] = []
    parsed: list[tuple[str, IPAddress, str]] = []
    for item in _items(text.strip()):
        if not item:
            problems.append(Problem(variable, "empty item in the comma-separated list", text.strip()))
            continue
        try:
            gateway = _gateway(item, variable)
        except ConfigError as error:
            problems.extend(error.problems)
            continue
        parsed.append((family_of(gateway), gateway, item))
    if problems:
        raise ConfigError(problems)
    return _one_per_family(variable, parsed, str)


def family_problems(sources: Sources, gateways: Gateways, source_variable: str, gateway_variable: str) -> list[Problem]:
    """Each gateway must match a source's family, each source needs a gateway, and no gateway may be its source."""
    problems = []
    for family in FAMILIES:
        source, gateway = sources.get(family), gateways.get(family)
        name = FAMILY_NAMES[family]
        if gateway is not None and source is None:
            have = " and ".join(FAMILY_NAMES[f] for f in sources.families)
            problems.append(
                Problem(
                    gateway_variable,
                    f"{gateway} is an {name} gateway but {source_variable} has no {name} address (it has {have}); each gateway"
                    " must match a source's family",
                    str(gateway),
                )
            )
        elif source is not None and gateway is None:
            problems.append(
                Problem(
                    gateway_variable,
                    f"no {name} gateway for {source_variable}'s {name} address {source.ip} (give one next hop of each family,"
                    " comma-separated, e.g. 192.168.12.1,2001:db8::1)",
                )
            )
        elif source is not None and gateway is not None and source.ip == gateway:
            problems.append(Problem(gateway_variable, f"must differ from {source_variable}", str(gateway)))
    return problems
