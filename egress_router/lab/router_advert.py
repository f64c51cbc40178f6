"""IPv6 router advertisements as a site router sends them, for the lab: a router on the node's network that
offers a SLAAC prefix and itself as the default router (what `init` must keep off the egress interface).

`advertisement()` builds the message (pure); `advertise()` sends it to all nodes on one link from a raw ICMPv6
socket, which the kernel completes with the checksum.
"""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv6Network

ROUTER_ADVERTISEMENT = 134
ALL_NODES = "ff02::1"
#: RFC 4861 6.1.2: a host ignores an advertisement that was not sent with hop limit 255 (it came from off-link).
HOP_LIMIT = 255
OPTION_SOURCE_LINK_LAYER = 1
OPTION_PREFIX = 3
FLAG_ON_LINK = 0x80
FLAG_AUTONOMOUS = 0x40  # the A flag: hosts form an address in the prefix themselves (SLAAC)


def advertisement(prefix: IPv6Network, router_lifetime: int = 1800, mac: bytes | None = None, valid: int = 86400) -> bytes:
    """A router advertisement: `router_lifetime` > 0 makes the sender a default router; a prefix information option
    with the L and A flags for `prefix` (a /64) lets hosts configure an address in it."""
    header = struct.pack("!BBHBBHII", ROUTER_ADVERTISEMENT, 0, 0, 64, 0, router_lifetime, 0, 0)
    pio = struct.pack(
        "!BBBBIII16s",
        OPTION_PREFIX,
        4,  # length in units of 8 octets
        prefix.prefixlen,
        FLAG_ON_LINK | FLAG_AUTONOMOUS,
        valid,
        valid,  # preferred lifetime
        0,
        prefix.network_address.packed,
    )
    source = struct.pack("!BB6s", OPTION_SOURCE_LINK_LAYER, 1, mac) if mac is not None else b""
    return header + source + pio


def advertise(interface: str, message: bytes) -> None:
    """Send `message` to all nodes on `interface`'s link, in the current network namespace (from its link-local
    address, as routers do: hosts ignore advertisements from any other source)."""
    index = socket.if_nametoindex(interface)
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, HOP_LIMIT)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        sock.sendto(message, (ALL_NODES, 0, 0, index))
