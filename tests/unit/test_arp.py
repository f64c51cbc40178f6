from ipaddress import IPv4Address

import pytest

from egress_router.init.arp import announcement


def test_announcement_frame() -> None:
    mac = bytes.fromhex("0a0b0c0d0e0f")
    frame = announcement(mac, IPv4Address("192.168.12.99"))
    assert len(frame) == 42
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac and frame[12:14] == b"\x08\x06"
    arp = frame[14:]
    assert arp[:8] == bytes.fromhex("0001080006040001")  # Ethernet, IPv4, request
    assert arp[8:14] == mac
    assert arp[14:18] == arp[24:28] == bytes([192, 168, 12, 99])  # sender and target are our address
    assert arp[18:24] == b"\x00" * 6


def test_announcement_rejects_bad_mac() -> None:
    with pytest.raises(ValueError):
        announcement(b"\x00" * 5, IPv4Address("192.0.2.1"))


def test_neighbour_advertisement() -> None:
    from ipaddress import IPv6Address

    from egress_router.init.arp import neighbour_advertisement

    mac = bytes.fromhex("0a0b0c0d0e0f")
    message = neighbour_advertisement(mac, IPv6Address("2001:db8:12::99"))
    assert len(message) == 32  # ICMPv6 header with flags, target, one 8-byte option
    assert message[:4] == bytes([136, 0, 0, 0])  # type 136, code 0, checksum left to the kernel
    assert message[4] == 0x20 and message[5:8] == b"\x00" * 3  # override, not solicited, not a router
    assert message[8:24] == IPv6Address("2001:db8:12::99").packed  # the target is our address
    assert message[24:26] == bytes([2, 1]) and message[26:] == mac  # target link-layer address option, 8 bytes
    assert neighbour_advertisement(mac, IPv6Address("2001:db8:12::99"), router=True)[4] == 0xA0
    with pytest.raises(ValueError):
        neighbour_advertisement(b"\x00" * 7, IPv6Address("2001:db8::1"))
