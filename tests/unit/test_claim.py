"""RFC 5227's pure parts: ARP frames in and out, what a frame claims, when a claim is a conflict, the probe schedule."""

from __future__ import annotations

import random
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.init.arp import announcement
from egress_router.init.claim import (
    ARP_REPLY,
    ARP_REQUEST,
    DEFAULT_TIMING,
    ArpPacket,
    Claim,
    ProbeTiming,
    arp_claim,
    arp_frame,
    conflicts_while_holding,
    conflicts_while_probing,
    mac_text,
    parse_arp,
    probe,
    probe_schedule,
    refusal,
)

OURS = bytes.fromhex("0a0000000001")
OTHER = bytes.fromhex("0a0000000002")
ADDRESS = IPv4Address("192.168.12.99")
ZERO_MAC = b"\x00" * 6

macs = st.binary(min_size=6, max_size=6)
ipv4 = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
packets = st.builds(ArpPacket, st.integers(0, 0xFFFF), macs, ipv4, macs, ipv4)


def test_probe_frame() -> None:
    frame = probe(OURS, ADDRESS)
    assert len(frame) == 42
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == OURS and frame[12:14] == b"\x08\x06"
    assert frame[14:22] == bytes.fromhex("0001080006040001")  # Ethernet, IPv4, request
    assert frame[22:28] == OURS
    assert frame[28:32] == b"\x00" * 4  # from 0.0.0.0: nobody's ARP cache learns anything from a probe
    assert frame[32:38] == ZERO_MAC
    assert frame[38:42] == ADDRESS.packed


def test_the_probe_and_the_announcement_parse_as_they_were_meant() -> None:
    assert parse_arp(probe(OURS, ADDRESS)) == ArpPacket(ARP_REQUEST, OURS, IPv4Address(0), ZERO_MAC, ADDRESS)
    assert parse_arp(announcement(OURS, ADDRESS)) == ArpPacket(ARP_REQUEST, OURS, ADDRESS, ZERO_MAC, ADDRESS)


@given(packets, macs)
def test_frames_round_trip(packet: ArpPacket, destination: bytes) -> None:
    frame = arp_frame(packet, destination)
    assert frame[:6] == destination
    assert parse_arp(frame) == packet
    assert parse_arp(frame + b"\x00" * 18) == packet  # Ethernet pads short frames to 60 bytes


@given(st.binary(max_size=80))
def test_any_bytes_parse_to_a_packet_or_none(frame: bytes) -> None:
    packet = parse_arp(frame)
    if packet is not None:
        assert len(frame) >= 42 and frame[12:14] == b"\x08\x06"
        assert arp_frame(packet, frame[:6]) == frame[:42]


@given(packets, st.integers(0, 41))
def test_truncated_frames_are_no_packets(packet: ArpPacket, length: int) -> None:
    assert parse_arp(arp_frame(packet)[:length]) is None


@pytest.mark.parametrize(
    ("offset", "value"),
    [(12, b"\x08\x00"), (14, b"\x00\x06"), (16, b"\x86\xdd"), (18, b"\x08"), (19, b"\x10")],
    ids=["not-arp", "not-ethernet", "not-ipv4", "hlen", "plen"],
)
def test_other_kinds_of_frame_are_no_packets(offset: int, value: bytes) -> None:
    frame = bytearray(probe(OURS, ADDRESS))
    frame[offset : offset + len(value)] = value
    assert parse_arp(bytes(frame)) is None


def test_bad_macs_are_refused() -> None:
    with pytest.raises(ValueError):
        probe(b"\x00" * 5, ADDRESS)
    with pytest.raises(ValueError):
        arp_frame(ArpPacket(ARP_REQUEST, OURS, ADDRESS, ZERO_MAC, ADDRESS), b"\xff")


def claim_of(op: int, sender: bytes, sender_ip: str, target_ip: str) -> Claim | None:
    return arp_claim(ArpPacket(op, sender, IPv4Address(sender_ip), ZERO_MAC, IPv4Address(target_ip)))


def test_what_frames_claim() -> None:
    # an answer, an announcement, and any request that has a sender address: its sender holds that address
    assert claim_of(ARP_REPLY, OTHER, "192.168.12.99", "0.0.0.0") == Claim(ADDRESS, OTHER)
    assert claim_of(ARP_REQUEST, OTHER, "192.168.12.99", "192.168.12.99") == Claim(ADDRESS, OTHER)
    assert claim_of(ARP_REQUEST, OTHER, "192.168.12.99", "192.168.12.1") == Claim(ADDRESS, OTHER)
    # a probe: its sender wants the target
    assert claim_of(ARP_REQUEST, OTHER, "0.0.0.0", "192.168.12.99") == Claim(ADDRESS, OTHER, probing=True)
    # nothing to learn
    assert claim_of(ARP_REPLY, OTHER, "0.0.0.0", "192.168.12.99") is None
    assert claim_of(ARP_REQUEST, OTHER, "0.0.0.0", "0.0.0.0") is None


@pytest.mark.parametrize(
    ("claim", "probing", "holding"),
    [
        (Claim(ADDRESS, OTHER), True, True),  # another host holds it
        (Claim(ADDRESS, OTHER, probing=True), True, False),  # another host probes for it: a race while we probe only
        (Claim(ADDRESS, OURS), False, False),  # our own frames (answers from our MAC)
        (Claim(ADDRESS, OURS, probing=True), False, False),
        (Claim(IPv4Address("192.168.12.98"), OTHER), False, False),  # another address
    ],
)
def test_which_claims_are_conflicts(claim: Claim, probing: bool, holding: bool) -> None:
    assert conflicts_while_probing(claim, ADDRESS, OURS) is probing
    assert conflicts_while_holding(claim, ADDRESS, OURS) is holding


def test_the_refusal_names_the_variable_the_address_and_the_mac() -> None:
    assert refusal(Claim(ADDRESS, OTHER), "macvlan0") == (
        "EGRESS_SOURCE: 192.168.12.99 is already in use: MAC 0a:00:00:00:00:02 answered for it on macvlan0"
        " (another router pod or host holds it); give each router its own address, or stop the other holder"
    )
    racing = refusal(Claim(ADDRESS, OTHER, probing=True), "net1")
    assert racing.startswith("EGRESS_SOURCE: 192.168.12.99 is already in use: MAC 0a:00:00:00:00:02 probed for it on net1 while we did")
    assert "\n" not in racing


def test_mac_text() -> None:
    assert mac_text(bytes.fromhex("02aabbccddef")) == "02:aa:bb:cc:dd:ef"


@given(st.integers())
def test_the_default_schedule_is_three_probes_in_about_a_second(seed: int) -> None:
    sends, end = probe_schedule(DEFAULT_TIMING, random.Random(seed).uniform)
    assert len(sends) == 3
    assert 0 <= sends[0] <= 0.1
    for before, after in zip(sends, sends[1:], strict=False):
        assert 0.2 <= after - before <= 0.35
    assert end == sends[-1] + 0.4
    assert 0.8 <= end <= DEFAULT_TIMING.longest == pytest.approx(1.2)


def test_the_schedule_follows_the_timing() -> None:
    lowest, highest = (lambda a, b: a), (lambda a, b: b)
    timing = ProbeTiming(probes=4, first_wait=1.0, gap=(1.0, 2.0), last_wait=2.0)  # RFC 5227's own pace
    assert probe_schedule(timing, lowest) == ((0.0, 1.0, 2.0, 3.0), 5.0)
    assert probe_schedule(timing, highest) == ((1.0, 3.0, 5.0, 7.0), 9.0)
    assert timing.longest == 9.0
