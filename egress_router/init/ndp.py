"""Neighbour discovery (RFC 4861) frames for watching who claims an IPv6 EGRESS_SOURCE: IPv6's counterpart of
claim.py's ARP.

Pure: Ethernet frames in and out. A received neighbour advertisement or solicitation becomes the same `Claim`
an ARP packet does, so conflicts.py decides for both families; the probe is a duplicate address detection
solicitation (RFC 4862 5.4.2, from ::) and the announcement an unsolicited advertisement (RFC 4861 7.2.6).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address

from egress_router.init.claim import Claim

ETH_P_IPV6 = 0x86DD
ICMPV6 = 58
NEIGHBOUR_SOLICITATION = 135
NEIGHBOUR_ADVERTISEMENT = 136
SOURCE_LINK_LAYER_ADDRESS, TARGET_LINK_LAYER_ADDRESS = 1, 2
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x80, 0x40, 0x20
#: RFC 4861: neighbour discovery is sent with hop limit 255; anything less came through a router and is dropped.
ND_HOP_LIMIT = 255
ALL_NODES = IPv6Address("ff02::1")
UNSPECIFIED = IPv6Address(0)
ETHERNET, IPV6_HEADER, ND_BODY = 14, 40, 24  # ND_BODY: ICMPv6 header, flags/reserved, target address

#: A classic BPF program for a packet socket: only ICMPv6 neighbour solicitations and advertisements (without
#: extension headers, as RFC 4861 sends them) reach us, not the IPv6 traffic the router forwards.
#: (code, jt, jf, k) as in struct sock_filter.
NDP_FILTER: tuple[tuple[int, int, int, int], ...] = (
    (0x28, 0, 0, 12),  # ldh [12]: EtherType
    (0x15, 0, 6, ETH_P_IPV6),  # IPv6, or drop
    (0x30, 0, 0, ETHERNET + 6),  # ldb [20]: next header
    (0x15, 0, 4, ICMPV6),  # ICMPv6, or drop
    (0x30, 0, 0, ETHERNET + IPV6_HEADER),  # ldb [54]: ICMPv6 type
    (0x15, 1, 0, NEIGHBOUR_SOLICITATION),
    (0x15, 0, 1, NEIGHBOUR_ADVERTISEMENT),
    (0x06, 0, 0, 0x40000),  # accept the whole frame
    (0x06, 0, 0, 0),  # drop
)


@dataclass(frozen=True)
class NdpPacket:
    """A neighbour solicitation or advertisement, with what it was sent from."""

    kind: int  # NEIGHBOUR_SOLICITATION or NEIGHBOUR_ADVERTISEMENT
    ethernet_source: bytes
    source: IPv6Address
    target: IPv6Address
    link_layer: bytes | None  # the source (solicitation) or target (advertisement) link-layer address option


def checksum(source: IPv6Address, destination: IPv6Address, message: bytes) -> int:
    """The ICMPv6 checksum (RFC 4443 2.3) over the pseudo-header and `message` (its checksum field zero)."""
    data = source.packed + destination.packed + struct.pack("!I3xB", len(message), ICMPV6) + message
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def parse_ndp(frame: bytes) -> NdpPacket | None:
    """The neighbour solicitation or advertisement in an Ethernet frame; None for anything else, and for what
    RFC 4861 7.1.1/7.1.2 says to drop (hop limit not 255, code not 0, a bad checksum, a zero-length option).
    Trailing bytes past the IPv6 payload (Ethernet padding) are ignored."""
    if len(frame) < ETHERNET + IPV6_HEADER + ND_BODY or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IPV6:
        return None
    first, length, next_header, hop_limit = struct.unpack_from("!IHBB", frame, ETHERNET)
    if first >> 28 != 6 or next_header != ICMPV6 or hop_limit != ND_HOP_LIMIT or length < ND_BODY:
        return None
    start = ETHERNET + IPV6_HEADER
    message = frame[start : start + length]
    if len(message) != length:
        return None
    kind, code = message[0], message[1]
    if kind not in (NEIGHBOUR_SOLICITATION, NEIGHBOUR_ADVERTISEMENT) or code != 0:
        return None
    source = IPv6Address(frame[ETHERNET + 8 : ETHERNET + 24])
    destination = IPv6Address(frame[ETHERNET + 24 : ETHERNET + 40])
    if checksum(source, destination, message[:2] + b"\x00\x00" + message[4:]) != struct.unpack_from("!H", message, 2)[0]:
        return None
    wanted = SOURCE_LINK_LAYER_ADDRESS if kind == NEIGHBOUR_SOLICITATION else TARGET_LINK_LAYER_ADDRESS
    link_layer = None
    at = ND_BODY
    while at + 2 <= len(message):
        option, units = message[at], message[at + 1]
        if units == 0 or at + units * 8 > len(message):
            return None
        if option == wanted and units == 1:
            link_layer = message[at + 2 : at + 8]
        at += units * 8
    if at != len(message):
        return None
    return NdpPacket(kind, frame[6:12], source, IPv6Address(message[8:24]), link_layer)


def ndp_claim(packet: NdpPacket) -> Claim | None:
    """As arp_claim: an advertisement says its sender holds the target address; a solicitation from :: is
    duplicate address detection (its sender wants the target); one from an address says its sender holds that.
    The MAC is the link-layer address option's, else the Ethernet source's."""
    mac = packet.link_layer or packet.ethernet_source
    if packet.kind == NEIGHBOUR_ADVERTISEMENT:
        return Claim(packet.target, mac)
    if packet.source == UNSPECIFIED:
        return Claim(packet.target, mac, probing=True)
    return Claim(packet.source, mac)


def solicited_node(address: IPv6Address) -> IPv6Address:
    """The solicited-node multicast group of `address` (RFC 4291 2.7.1), which its holder listens on."""
    return IPv6Address(IPv6Address("ff02::1:ff00:0").packed[:13] + address.packed[13:])


def multicast_mac(group: IPv6Address) -> bytes:
    """The Ethernet address an IPv6 multicast group is sent to (RFC 2464 7)."""
    return b"\x33\x33" + group.packed[12:]


def _frame(mac: bytes, destination_mac: bytes, source: IPv6Address, destination: IPv6Address, message: bytes) -> bytes:
    if len(mac) != 6 or len(destination_mac) != 6:
        raise ValueError("a MAC address is 6 bytes")
    message = message[:2] + struct.pack("!H", checksum(source, destination, message)) + message[4:]
    ipv6 = struct.pack("!IHBB", 6 << 28, len(message), ICMPV6, ND_HOP_LIMIT) + source.packed + destination.packed
    return destination_mac + mac + struct.pack("!H", ETH_P_IPV6) + ipv6 + message


def probe(mac: bytes, address: IPv6Address) -> bytes:
    """A duplicate address detection solicitation for `address`: from ::, without a source link-layer option
    (RFC 4861 7.2.2), to its solicited-node group; whoever holds the address answers to all nodes."""
    group = solicited_node(address)
    message = struct.pack("!BBH4x", NEIGHBOUR_SOLICITATION, 0, 0) + address.packed
    return _frame(mac, multicast_mac(group), UNSPECIFIED, group, message)


def advertisement(mac: bytes, address: IPv6Address, *, router: bool = False) -> bytes:
    """An unsolicited neighbour advertisement from `address` to all nodes (as arp.neighbour_advertisement, as a
    whole frame): override set, so neighbours replace the MAC they had for it with ours."""
    flags = NA_OVERRIDE | (NA_ROUTER if router else 0)
    option = struct.pack("!BB", TARGET_LINK_LAYER_ADDRESS, 1) + mac
    message = struct.pack("!BBHB3x", NEIGHBOUR_ADVERTISEMENT, 0, 0, flags) + address.packed + option
    return _frame(mac, multicast_mac(ALL_NODES), address, ALL_NODES, message)
