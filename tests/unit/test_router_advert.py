"""The lab's router advertisement, byte for byte (RFC 4861 4.2 and 4.6.2): what a host's kernel takes as a default
router and a SLAAC prefix."""

import struct
from ipaddress import IPv6Network

from egress_router.lab.router_advert import advertisement


def test_a_default_router_with_a_slaac_prefix_and_its_link_layer_address() -> None:
    message = advertisement(IPv6Network("2001:db8:12::/64"), router_lifetime=1800, mac=bytes.fromhex("020000000001"), valid=600)
    kind, code, checksum, hops, flags, lifetime, reachable, retransmit = struct.unpack("!BBHBBHII", message[:16])
    assert (kind, code, checksum, hops, flags, lifetime, reachable, retransmit) == (134, 0, 0, 64, 0, 1800, 0, 0)
    assert message[16:24] == bytes([1, 1]) + bytes.fromhex("020000000001")  # source link-layer address option
    pio = message[24:]
    assert len(pio) == 32 and pio[:4] == bytes([3, 4, 64, 0xC0])  # prefix information: /64, on-link and autonomous
    assert struct.unpack("!III", pio[4:16]) == (600, 600, 0)
    assert pio[16:] == IPv6Network("2001:db8:12::/64").network_address.packed


def test_without_a_mac_there_is_no_link_layer_option() -> None:
    assert len(advertisement(IPv6Network("2001:db8:12::/64"))) == 16 + 32
