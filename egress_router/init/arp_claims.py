"""ARP on the egress interface for claim.py and conflicts.py: init's probes before it takes EGRESS_SOURCE, and
the monitor's watch for another host claiming it while the router holds it (neighbour discovery, ndp.py, for IPv6).

One packet socket bound to the egress interface and to ARP, so the kernel hands us only ARP from that link; for
IPv6, bound to IPv6 with a BPF filter that lets only neighbour solicitations and advertisements through.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import logging
import random
import select
import socket
import struct
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from types import TracebackType

from egress_router.config.addresses import IPAddress
from egress_router.errors import ApplyError
from egress_router.init import metrics, ndp
from egress_router.init.arp import _forwards, announcement
from egress_router.init.claim import (
    DEFAULT_TIMING,
    ETH_P_ARP,
    Claim,
    ProbeTiming,
    arp_claim,
    conflicts_while_probing,
    mac_text,
    parse_arp,
    probe,
    probe_schedule,
    refusal,
)
from egress_router.init.conflicts import ConflictWatch, Heard, Step
from egress_router.init.journal import describe
from egress_router.observe.stats import Stats

log = logging.getLogger(__name__)

SIOCGIFHWADDR = 0x8927
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4  # what we send ourselves, seen by our own socket too
#: Frames read per wake-up at most, so a flood of ARP cannot hold the loop.
READ_BATCH = 64


def _arp_claim(frame: bytes) -> Claim | None:
    packet = parse_arp(frame)
    return arp_claim(packet) if packet is not None else None


def _ndp_claim(frame: bytes) -> Claim | None:
    packet = ndp.parse_ndp(frame)
    return ndp.ndp_claim(packet) if packet is not None else None


def _attach_filter(sock: socket.socket, program: tuple[tuple[int, int, int, int], ...]) -> None:
    """SO_ATTACH_FILTER: the kernel runs `program` on each frame and hands us only what it accepts."""
    code = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(code)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(program), ctypes.addressof(buffer)))


class ArpSocket:
    """ARP frames that arrive on one interface (never the ones we send), and frames to send from it; with
    `ipv6`, neighbour discovery frames instead (parsed into the same Claims)."""

    def __init__(self, interface: str, *, ipv6: bool = False) -> None:
        # protocol 0 until bound: nothing arrives from other interfaces (or unfiltered) in between
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.parse: Callable[[bytes], Claim | None] = _ndp_claim if ipv6 else _arp_claim
        try:
            if ipv6:
                _attach_filter(self.sock, ndp.NDP_FILTER)
            self.sock.bind((interface, ndp.ETH_P_IPV6 if ipv6 else ETH_P_ARP))
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
        return [claim for frame in self.received() if (claim := self.parse(frame)) is not None]

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


class DadWitness:
    """Who made IPv6 duplicate address detection fail. The kernel runs DAD and only flags the address
    (IFA_F_DADFAILED); listening to neighbour discovery while it runs lets init name the MAC that answered, as its
    ARP probe does for IPv4. Without a socket (no NET_RAW) DAD still protects the address, unnamed."""

    def __init__(self, interface: str, address: IPAddress, *, listen: bool = True) -> None:
        self.address = address
        self.arp: ArpSocket | None = None
        if not listen or not isinstance(address, IPv6Address):
            return  # IPv4 has no DAD; an address already ours is not detected again
        try:
            self.arp = ArpSocket(interface, ipv6=True)
        except OSError as error:
            log.debug("cannot listen to neighbour discovery on %s during DAD: %s", interface, describe(error))

    def culprit(self) -> Claim | None:
        """Another host that advertised the address since we started listening, else one that probed for it (a
        probe heard before our own DAD began may come from the host that then holds it and answered)."""
        arp, found = self.arp, []
        try:
            while arp is not None and (frames := arp.received()):
                claims = (arp.parse(frame) for frame in frames)
                found += [c for c in claims if c is not None and conflicts_while_probing(c, self.address, arp.mac)]
        except OSError as error:  # the failure is reported anyway, only without the MAC
            log.debug("cannot read what neighbour discovery heard during DAD: %s", describe(error))
        return next((c for c in found if not c.probing), found[0] if found else None)

    def close(self) -> None:
        if self.arp is not None:
            self.arp.close()

    def __enter__(self) -> DadWitness:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()


# monitor: watching while the address is ours ------------------------------------------------------------


class AddressGuard:
    """Another host claiming EGRESS_SOURCE while the router holds it: read as it arrives on the event loop,
    probed for and announced at each check (conflicts.py decides). Used from the loop's thread only."""

    def __init__(self, interface: str, address: IPAddress, stats: Stats, opener: Callable[..., ArpSocket] | None = None) -> None:
        self.opener = opener or ArpSocket  # tests give a stand-in
        self.interface = interface
        self.address = address
        self.ipv6 = isinstance(address, IPv6Address)
        self.protocol = "neighbour discovery" if self.ipv6 else "ARP"
        self.watch = ConflictWatch(address)
        self.arp: ArpSocket | None = None
        self.failure: str | None = None  # why the socket could not be opened, logged once
        self.watched = False  # the socket was open before (it is opened again after a failure)
        self.conflicts = stats.counter(metrics.CONFLICTS)  # shared by the guards of a dual-stack router
        self.conflicts.setdefault((), 0)

    def reason(self) -> str | None:
        return self.watch.reason()

    def check(self) -> bool:
        """At each check interval, on the loop: probe while a conflict lasts, announce once when it is over.
        Returns whether the address was announced."""
        arp = self.arp or self._open()
        if arp is None:
            return False
        conflict = self.watch.conflict
        step = self.watch.check(time.monotonic())
        if step is Step.PROBE:
            self._send(arp, self._probe(arp.mac), "probe")
            return False
        if step is Step.OVER and conflict is not None:
            announced = self._send(arp, self._announcement(arp.mac), "announcement")
            how = "an unsolicited neighbour advertisement" if self.ipv6 else "gratuitous ARP"
            log.info(
                "address conflict over: MAC %s no longer answers for %s on %s; %s",
                mac_text(conflict.mac),
                self.address,
                self.interface,
                f"announced it with {how}" if announced else "could not announce it",
            )
            return announced
        return False

    def probe_now(self) -> None:
        """One probe outside a conflict (the monitor's start, before it announces): a holder that is otherwise
        silent answers it, and the conflict starts before the announcement would flip the LAN's caches."""
        arp = self.arp or self._open()
        if arp is not None:
            self._send(arp, self._probe(arp.mac), "probe")

    def _probe(self, mac: bytes) -> bytes:
        """An ARP probe, or for IPv6 a duplicate address detection solicitation: whoever holds the address answers."""
        if isinstance(self.address, IPv6Address):
            return ndp.probe(mac, self.address)
        return probe(mac, self.address)

    def _announcement(self, mac: bytes) -> bytes:
        if isinstance(self.address, IPv6Address):
            return ndp.advertisement(mac, self.address, router=_forwards(self.interface))
        return announcement(mac, self.address)

    def _send(self, arp: ArpSocket, frame: bytes, what: str) -> bool:
        try:
            arp.send(frame)
        except OSError as error:
            kind = f"{self.protocol} {what}"
            article = "an" if kind[0] in "AEIOUaeiou" else "a"
            log.warning("could not send %s %s for %s on %s: %s", article, kind, self.address, self.interface, describe(error))
            self.close()
            return False
        return True

    def _open(self) -> ArpSocket | None:
        try:
            arp = self.opener(self.interface, ipv6=self.ipv6)
        except OSError as error:
            failure = describe(error)
            if failure != self.failure:
                log.warning(
                    "cannot watch %s for other hosts claiming %s: %s (trying again at each check)", self.interface, self.address, failure
                )
            self.failure = failure
            return None
        asyncio.get_running_loop().add_reader(arp.fileno(), self._readable)
        again = " again" if self.failure is not None or self.watched else ""
        log.info("watching %s for other hosts claiming %s%s", self.interface, self.address, again)
        self.arp, self.failure, self.watched = arp, None, True
        return arp

    def _readable(self) -> None:
        arp = self.arp
        if arp is None:
            return
        try:
            claims = arp.claims()
        except OSError as error:  # the interface went away: open it again at the next check
            log.warning("stopped reading %s on %s: %s", self.protocol, self.interface, describe(error))
            self.close()
            return
        for claim in claims:
            heard = self.watch.heard(claim, arp.mac)
            if heard is Heard.STARTED:
                self.conflicts[()] += 1
                log.warning("address conflict: %s on %s; not ready until it stops", self.watch.reason(), self.interface)
            elif heard is Heard.MOVED:
                log.warning("address conflict goes on: now %s on %s", self.watch.reason(), self.interface)

    def close(self) -> None:
        """Also after a failure: the socket is opened again at the next check, and what it missed proves nothing."""
        self.watch.deaf()
        if self.arp is not None:
            asyncio.get_running_loop().remove_reader(self.arp.fileno())
            self.arp.close()
            self.arp = None
