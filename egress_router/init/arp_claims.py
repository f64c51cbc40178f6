"""ARP on the egress interface for claim.py: init's probes before it takes EGRESS_SOURCE.

One packet socket bound to the egress interface and to ARP, so the kernel hands us only ARP from that link.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import random
import select
import socket
import struct
import time
from ipaddress import IPv4Address
from types import TracebackType

from egress_router.errors import ApplyError
from egress_router.init.claim import (
    DEFAULT_TIMING,
    ETH_P_ARP,
    Claim,
    ProbeTiming,
    arp_claim,
    conflicts_while_probing,
    parse_arp,
    probe,
    probe_schedule,
    refusal,
)
from egress_router.init.journal import describe

log = logging.getLogger(__name__)

SIOCGIFHWADDR = 0x8927
PACKET_OUTGOING = 4  # what we send ourselves, seen by our own socket too
#: Frames read per wake-up at most, so a flood of ARP cannot hold the loop.
READ_BATCH = 64


class ArpSocket:
    """ARP frames that arrive on one interface (never the ones we send), and frames to send from it."""

    def __init__(self, interface: str) -> None:
        # protocol 0 until bound: nothing arrives from other interfaces in between
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self.sock.bind((interface, ETH_P_ARP))
            self.mac: bytes = fcntl.ioctl(self.sock, SIOCGIFHWADDR, struct.pack("256s", interface.encode()))[18:24]
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def wait(self, seconds: float) -> bool:
        """Whether something arrived within `seconds`."""
        return bool(select.select([self.sock], [], [], max(seconds, 0.0))[0])

    def received(self) -> list[bytes]:
        frames = []
        for _ in range(READ_BATCH):
            try:
                frame, (_, _, kind, *_) = self.sock.recvfrom(2048)
            except BlockingIOError:
                break
            if kind != PACKET_OUTGOING:
                frames.append(frame)
        return frames

    def claims(self) -> list[Claim]:
        """What the frames that arrived say about who holds which address."""
        packets = (parse_arp(frame) for frame in self.received())
        return [claim for packet in packets if packet is not None and (claim := arp_claim(packet)) is not None]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ArpSocket:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()


# init: probing before the claim --------------------------------------------------------------------------


def refuse_if_taken(interface: str, address: IPv4Address, timing: ProbeTiming = DEFAULT_TIMING) -> None:
    """Probe for `address` on `interface` (up, without the address); ApplyError naming the MAC of any other
    host that holds it or probes for it at the same time."""
    started = time.monotonic()
    try:
        with ArpSocket(interface) as arp:
            found = _probe(arp, interface, address, timing)
    except OSError as error:
        hint = " (the init container needs NET_RAW)" if error.errno == errno.EPERM else ""
        raise ApplyError(f"cannot send ARP probes for EGRESS_SOURCE {address} on {interface}: {describe(error)}{hint}") from error
    if found is not None:
        raise ApplyError(refusal(found, interface))
    took = time.monotonic() - started
    log.info("%s is free: no other host answered %d ARP probes on %s in %.1f s", address, timing.probes, interface, took)


def _probe(arp: ArpSocket, interface: str, address: IPv4Address, timing: ProbeTiming) -> Claim | None:
    sends, end = probe_schedule(timing, random.uniform)
    frame = probe(arp.mac, address)
    start = time.monotonic()
    for at in sends:
        found = _listen(arp, address, start + at)
        if found is not None:
            return found
        arp.send(frame)
        log.debug("ARP probe for %s sent on %s", address, interface)
    return _listen(arp, address, start + end)


def _listen(arp: ArpSocket, address: IPv4Address, until: float) -> Claim | None:
    """The first conflicting claim that arrives before `until` (monotonic time), or None."""
    while True:
        for claim in arp.claims():
            if conflicts_while_probing(claim, address, arp.mac):
                return claim
        left = until - time.monotonic()
        if left <= 0 or not arp.wait(left):
            return None
