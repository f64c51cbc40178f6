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
