"""Neighbour discovery's pure parts: the frames the IPv6 watch sends, and the Claims what it hears makes."""

from __future__ import annotations

import struct
from ipaddress import IPv6Address

from hypothesis import given
from hypothesis import strategies as st

from egress_router.init.claim import Claim, conflicts_while_holding
from egress_router.init.ndp import (
    ALL_NODES,
    NDP_FILTER,
    NEIGHBOUR_ADVERTISEMENT,
    NEIGHBOUR_SOLICITATION,
    UNSPECIFIED,
    NdpPacket,
    _frame,
    advertisement,
    checksum,
    multicast_mac,
    ndp_claim,
    parse_ndp,
    probe,
    solicited_node,
)

OURS = bytes.fromhex("0a0000000001")
OTHER = bytes.fromhex("0a0000000002")
ADDRESS = IPv6Address("2001:db8:12::63")

macs = st.binary(min_size=6, max_size=6)
ipv6 = st.builds(IPv6Address, st.integers(0, 2**128 - 1))


def run_filter(frame: bytes) -> int:
    """The classic BPF program as the kernel runs it (only the instructions NDP_FILTER uses)."""
    pc, accumulator = 0, 0
    while True:
        code, jt, jf, k = NDP_FILTER[pc]
        if code == 0x06:
            return k
        if code in (0x28, 0x30):
            size = 2 if code == 0x28 else 1
            if k + size > len(frame):
                return 0
            accumulator = int.from_bytes(frame[k : k + size], "big")
            pc += 1
        else:
            assert code == 0x15
            pc += 1 + (jt if accumulator == k else jf)


def test_the_probe_is_duplicate_address_detection() -> None:
    frame = probe(OURS, ADDRESS)
    group = IPv6Address("ff02::1:ff00:63")
    assert solicited_node(ADDRESS) == group
    assert frame[:6] == bytes.fromhex("3333ff000063") and frame[6:12] == OURS and frame[12:14] == b"\x86\xdd"
    assert frame[14 + 7] == 255  # hop limit: neighbour discovery that crossed no router
    assert frame[22:38] == UNSPECIFIED.packed and frame[38:54] == group.packed
    assert len(frame) == 14 + 40 + 24  # no source link-layer option from ::
    assert parse_ndp(frame) == NdpPacket(NEIGHBOUR_SOLICITATION, OURS, UNSPECIFIED, ADDRESS, None)


def test_the_announcement_is_an_unsolicited_override_advertisement() -> None:
    frame = advertisement(OURS, ADDRESS)
    assert frame[:6] == multicast_mac(ALL_NODES) == bytes.fromhex("333300000001")
    assert frame[22:38] == ADDRESS.packed and frame[38:54] == ALL_NODES.packed
    assert frame[54] == NEIGHBOUR_ADVERTISEMENT and frame[58] == 0x20  # override, not solicited, not a router
    assert advertisement(OURS, ADDRESS, router=True)[58] == 0xA0
    assert parse_ndp(frame) == NdpPacket(NEIGHBOUR_ADVERTISEMENT, OURS, ADDRESS, ADDRESS, OURS)


@given(ipv6, ipv6, st.binary(max_size=64))
def test_a_message_with_its_checksum_sums_to_zero(source: IPv6Address, destination: IPv6Address, body: bytes) -> None:
    """RFC 4443 2.3 (that the kernel agrees, the lab test shows: neighbours act on our frames)."""
    message = bytearray(bytes([NEIGHBOUR_ADVERTISEMENT, 0, 0, 0]) + body)
    message[2:4] = struct.pack("!H", checksum(source, destination, bytes(message)))
    assert checksum(source, destination, bytes(message)) in (0, 0xFFFF)


def test_another_hosts_advertisement_is_a_conflict_its_probe_is_not() -> None:
    na = parse_ndp(advertisement(OTHER, ADDRESS))
    assert na is not None and ndp_claim(na) == Claim(ADDRESS, OTHER)
    assert conflicts_while_holding(Claim(ADDRESS, OTHER), ADDRESS, OURS)
    ns = parse_ndp(probe(OTHER, ADDRESS))
    assert ns is not None and ndp_claim(ns) == Claim(ADDRESS, OTHER, probing=True)
    assert not conflicts_while_holding(Claim(ADDRESS, OTHER, probing=True), ADDRESS, OURS)
    mine = parse_ndp(advertisement(OURS, ADDRESS))
    assert mine is not None and not conflicts_while_holding(ndp_claim(mine) or Claim(ADDRESS, OTHER), ADDRESS, OURS)


def test_without_a_link_layer_option_the_ethernet_source_is_the_mac() -> None:
    message = struct.pack("!BBHB3x", NEIGHBOUR_ADVERTISEMENT, 0, 0, 0x60) + ADDRESS.packed
    packet = parse_ndp(_frame(OTHER, OURS, ADDRESS, IPv6Address("fe80::1"), message))
    assert packet is not None and ndp_claim(packet) == Claim(ADDRESS, OTHER)


def test_a_solicitation_from_an_address_claims_that_address() -> None:
    source = IPv6Address("2001:db8:12::7")
    message = struct.pack("!BBH4x", NEIGHBOUR_SOLICITATION, 0, 0) + ADDRESS.packed + b"\x01\x01" + OTHER
    packet = parse_ndp(_frame(bytes(6), bytes(6), source, solicited_node(ADDRESS), message))
    assert packet is not None and ndp_claim(packet) == Claim(source, OTHER)


def test_what_rfc_4861_says_to_drop_is_not_parsed() -> None:
    good = bytearray(advertisement(OTHER, ADDRESS))
    assert parse_ndp(bytes(good) + b"\x00" * 20) is not None  # Ethernet padding
    for at, value in ((21, 64), (55, 1), (56, good[56] ^ 1), (79, 0), (12, 0x08)):  # hop limit, code, checksum, option, type
        bad = bytearray(good)
        bad[at] = value
        assert parse_ndp(bytes(bad)) is None, at
    assert parse_ndp(bytes(good[:-1])) is None  # shorter than its payload length


@given(macs, ipv6, st.booleans())
def test_frames_round_trip_and_pass_the_filter(mac: bytes, address: IPv6Address, router: bool) -> None:
    for frame, kind, source, link_layer in (
        (probe(mac, address), NEIGHBOUR_SOLICITATION, UNSPECIFIED, None),
        (advertisement(mac, address, router=router), NEIGHBOUR_ADVERTISEMENT, address, mac),
    ):
        assert parse_ndp(frame) == NdpPacket(kind, mac, source, address, link_layer)
        assert run_filter(frame) > 0


@given(st.binary(max_size=120))
def test_any_bytes_parse_or_are_refused_and_what_parses_passes_the_filter(frame: bytes) -> None:
    packet = parse_ndp(frame)
    if packet is not None:
        assert run_filter(frame) > 0
        assert ndp_claim(packet) is not None


@given(st.binary(min_size=54, max_size=120), st.sampled_from([NEIGHBOUR_SOLICITATION, NEIGHBOUR_ADVERTISEMENT]))
def test_mangled_ndp_never_raises(tail: bytes, kind: int) -> None:
    """Frames that look like NDP up to the type, anything after: parsed or refused, never an exception."""
    header = advertisement(OTHER, ADDRESS)[:54]
    frame = header + bytes([kind]) + tail
    packet = parse_ndp(frame)
    assert packet is None or packet.kind == kind


def test_the_filter_drops_other_traffic() -> None:
    tcp = bytearray(advertisement(OTHER, ADDRESS))
    tcp[20] = 6
    assert run_filter(bytes(tcp)) == 0
    echo = bytearray(advertisement(OTHER, ADDRESS))
    echo[54] = 128
    assert run_filter(bytes(echo)) == 0
    assert run_filter(b"\x00" * 10) == 0
