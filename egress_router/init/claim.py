"""Claiming EGRESS_SOURCE only when no other host holds it (RFC 5227, IPv4 Address Conflict Detection).

Pure: ARP frames in and out, who a frame says holds which address, when a claim is a conflict, and when to
send the probes. The packet socket that carries them is `arp_claims.py`.

A received frame becomes a `Claim` (an address and the MAC that holds it, or probes for it); everything after
that is family-neutral, so IPv6 (a neighbour advertisement for our address, or another host's duplicate address
detection) can produce the same Claims from its own parser.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from egress_router.config.addresses import IPAddress

ETH_P_ARP = 0x0806
ETH_P_IPV4 = 0x0800
ARP_REQUEST = 1
ARP_REPLY = 2
BROADCAST = b"\xff" * 6
#: Ethernet header (14 bytes) and an Ethernet/IPv4 ARP body (28): shorter frames carry no such ARP.
ARP_FRAME_LENGTH = 42
UNSPECIFIED = IPv4Address(0)


def mac_text(mac: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in mac)


@dataclass(frozen=True)
class ArpPacket:
    """An Ethernet/IPv4 ARP packet, as the fields RFC 826 names."""

    op: int
    sender_mac: bytes
    sender_ip: IPv4Address
    target_mac: bytes
    target_ip: IPv4Address


def parse_arp(frame: bytes) -> ArpPacket | None:
    """The ARP packet in an Ethernet frame; None for anything else (another protocol, another hardware or
    address type, a truncated frame). Trailing bytes (Ethernet padding) are ignored."""
    if len(frame) < ARP_FRAME_LENGTH or struct.unpack_from("!H", frame, 12)[0] != ETH_P_ARP:
        return None
    hardware, protocol, hlen, plen, op = struct.unpack_from("!HHBBH", frame, 14)
    if (hardware, protocol, hlen, plen) != (1, ETH_P_IPV4, 6, 4):
        return None
    return ArpPacket(
        op=op,
        sender_mac=frame[22:28],
        sender_ip=IPv4Address(frame[28:32]),
        target_mac=frame[32:38],
        target_ip=IPv4Address(frame[38:42]),
    )


def arp_frame(packet: ArpPacket, destination: bytes = BROADCAST) -> bytes:
    """`packet` in an Ethernet frame from its sender's MAC to `destination`."""
    if len(packet.sender_mac) != 6 or len(packet.target_mac) != 6 or len(destination) != 6:
        raise ValueError("a MAC address is 6 bytes")
    ethernet = destination + packet.sender_mac + struct.pack("!H", ETH_P_ARP)
    body = struct.pack("!HHBBH", 1, ETH_P_IPV4, 6, 4, packet.op)
    return ethernet + body + packet.sender_mac + packet.sender_ip.packed + packet.target_mac + packet.target_ip.packed


def probe(mac: bytes, address: IPv4Address) -> bytes:
    """An ARP probe (RFC 5227 2.1.1): a broadcast request for `address` from 0.0.0.0, so that asking changes
    no other host's ARP cache; whoever holds the address answers it."""
    return arp_frame(ArpPacket(ARP_REQUEST, mac, UNSPECIFIED, b"\x00" * 6, address))


@dataclass(frozen=True)
class Claim:
    """What one packet says about an address: the host with `mac` holds it, or (`probing`) wants it."""

    address: IPAddress
    mac: bytes
    probing: bool = False


def arp_claim(packet: ArpPacket) -> Claim | None:
    """Any ARP packet with a sender address says its sender holds it (request, reply or announcement alike);
    a request from 0.0.0.0 is a probe: its sender wants the target address."""
    if packet.sender_ip != UNSPECIFIED:
        return Claim(packet.sender_ip, packet.sender_mac)
    if packet.op == ARP_REQUEST and packet.target_ip != UNSPECIFIED:
        return Claim(packet.target_ip, packet.sender_mac, probing=True)
    return None


def conflicts_while_probing(claim: Claim, address: IPAddress, ours: bytes) -> bool:
    """Before we claim `address` (RFC 5227 2.1.1): another host holds it, or probes for it at the same time
    (then both back off). Frames from our own MAC are our own and never a conflict."""
    return claim.address == address and claim.mac != ours


def conflicts_while_holding(claim: Claim, address: IPAddress, ours: bytes) -> bool:
    """While we hold `address` (RFC 5227 2.4): another host says it holds it. Another host's probe is not a
    conflict: our kernel answers it, and that host backs off."""
    return not claim.probing and conflicts_while_probing(claim, address, ours)


def refusal(claim: Claim, interface: str, check: str = "") -> str:
    """Why init will not take the address, as the one line the user reads; `check` names the check that found
    it when that is not our own ARP probe (IPv6's duplicate address detection)."""
    who = f"MAC {mac_text(claim.mac)}"
    if claim.probing:
        found = f"{who} probed for it on {interface} while we did (another router starting with the same address{check})"
    else:
        found = f"{who} answered for it on {interface} (another router pod or host holds it{check})"
    return f"EGRESS_SOURCE: {claim.address} is already in use: {found}; give each router its own address, or stop the other holder"


@dataclass(frozen=True)
class ProbeTiming:
    """When init sends its probes and how long it listens: RFC 5227's pattern (a random wait, PROBE_NUM probes
    at random gaps, a last wait for late answers) at about a sixth of its pace, so a probe costs ~1 s, not ~7 s.

    RFC 5227 itself: wait 0-1 s, 3 probes 1-2 s apart, then 2 s. Answers to a probe come in milliseconds on
    any LAN; the RFC's pace is for hosts that may be slow to answer or to appear.
    """

    probes: int = 3
    first_wait: float = 0.1  # random 0..first_wait before the first probe (PROBE_WAIT)
    gap: tuple[float, float] = (0.2, 0.35)  # random gap between probes (PROBE_MIN, PROBE_MAX)
    last_wait: float = 0.4  # listening after the last probe (ANNOUNCE_WAIT)

    @property
    def longest(self) -> float:
        return self.first_wait + (self.probes - 1) * self.gap[1] + self.last_wait

    @property
    def average(self) -> float:
        return self.first_wait / 2 + (self.probes - 1) * sum(self.gap) / 2 + self.last_wait

    @classmethod
    def lasting(cls, seconds: float) -> ProbeTiming:
        """The default pattern with every wait scaled, so that probing lasts `seconds` on average."""
        default = cls()
        scale = seconds / default.average
        low, high = default.gap
        return cls(default.probes, default.first_wait * scale, (low * scale, high * scale), default.last_wait * scale)


#: What init uses unless told otherwise (EGRESS_ROUTER_PROBE_TIME): 3 probes, 0.8-1.2 s in all, 1 s on average.
DEFAULT_TIMING = ProbeTiming()


def probe_schedule(timing: ProbeTiming, uniform: Callable[[float, float], float]) -> tuple[tuple[float, ...], float]:
    """When to send each probe and when to stop listening, in seconds from the start.

    `uniform(a, b)` is `random.uniform` (random.Random(seed).uniform in tests): random delays keep hosts that
    start together (pods of one rollout) from probing in lockstep."""
    sends: list[float] = []
    at = uniform(0.0, timing.first_wait)
    for _ in range(timing.probes):
        sends.append(at)
        at += uniform(*timing.gap)
    return tuple(sends), sends[-1] + timing.last_wait
