"""Announcing the egress address, so LAN hosts that knew EGRESS_SOURCE at an old pod's MAC learn the new one:
gratuitous ARP for IPv4, an unsolicited neighbour advertisement for IPv6 (IPv6 has no ARP)."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
import time
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address

from egress_router.config.addresses import IPAddress

log = logging.getLogger(__name__)

ETH_P_ARP = 0x0806
SIOCGIFHWADDR = 0x8927
BROADCAST = b"\xff" * 6
#: The second announcement: after the first, and after the 1 s neighbour locktime of Linux peers.
REPEAT_AFTER = 2.0

ICMPV6_NEIGHBOUR_ADVERTISEMENT = 136
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x80, 0x40, 0x20
TARGET_LINK_LAYER_ADDRESS = 2
ALL_NODES = "ff02::1"
#: RFC 4861: neighbour discovery messages are sent with hop limit 255 and dropped otherwise.
ND_HOP_LIMIT = 255


def announcement(mac: bytes, address: IPv4Address) -> bytes:
    """An ARP announcement (RFC 5227): a broadcast request whose sender and target are our address."""
    if len(mac) != 6:
        raise ValueError("a MAC address is 6 bytes")
    ip = address.packed
    ethernet = BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\x00" * 6 + ip
    return ethernet + arp


def neighbour_advertisement(mac: bytes, address: IPv6Address, *, router: bool = False) -> bytes:
    """An unsolicited neighbour advertisement (RFC 4861 7.2.6) as the ICMPv6 message a raw socket sends: override
    set (neighbours replace the old MAC), solicited clear, target our address, our MAC as target link-layer option.
    The checksum is left zero: the kernel fills it in for ICMPv6 raw sockets."""
    if len(mac) != 6:
        raise ValueError("a MAC address is 6 bytes")
    flags = NA_OVERRIDE | (NA_ROUTER if router else 0)
    header = struct.pack("!BBHB3x", ICMPV6_NEIGHBOUR_ADVERTISEMENT, 0, 0, flags)
    option = struct.pack("!BB", TARGET_LINK_LAYER_ADDRESS, 1) + mac
    return header + address.packed + option


def _mac(sock: socket.socket, interface: str) -> bytes:
    return fcntl.ioctl(sock, SIOCGIFHWADDR, struct.pack("256s", interface.encode()))[18:24]


def _forwards(interface: str) -> bool:
    """Whether the interface routes IPv6: its advertisements then say so (the R flag), as the kernel's own do."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{interface}/forwarding", encoding="ascii") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def announce(interface: str, address: IPAddress) -> None:
    if isinstance(address, IPv6Address):
        index = socket.if_nametoindex(interface)
        with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ND_HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            sock.bind((str(address), 0, 0, index))  # the source is our address (usable: init waited for DAD)
            sock.sendto(neighbour_advertisement(_mac(sock, interface), address, router=_forwards(interface)), (ALL_NODES, 0, 0, index))
        log.debug("unsolicited neighbour advertisement for %s sent on %s", address, interface)
        return
    # Protocol 0 and sendto, not bind: a socket bound to a protocol joins the receive path, and joining and
    # leaving it costs two RCU grace periods (~15 ms of every init); this socket only ever sends.
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
        sock.sendto(announcement(_mac(sock, interface), address), (interface, ETH_P_ARP))
    log.debug("gratuitous ARP for %s sent on %s", address, interface)


def _how(address: IPAddress) -> str:
    return "an unsolicited neighbour advertisement" if address.version == 6 else "gratuitous ARP"


def announce_all(interface: str, addresses: Sequence[IPAddress]) -> list[IPAddress]:
    """Announce each address; the ones that went out."""
    sent = []
    for address in addresses:
        try:
            announce(interface, address)
        except OSError as error:
            log.warning(
                "could not send %s for %s on %s: %s (neighbours will learn the address when they ask)",
                _how(address),
                address,
                interface,
                error.strerror,
            )
            continue
        log.info("announced %s on %s with %s", address, interface, _how(address))
        sent.append(address)
    return sent


def announce_now_and_later(interface: str, addresses: Sequence[IPAddress]) -> bool:
    """Announce every egress address now, and again REPEAT_AFTER seconds later from a detached grandchild.

    The caller never waits (init exits at once) and no zombie is left behind (the child is reaped here).
    """
    sent = announce_all(interface, addresses)
    if not sent:
        return False
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):  # let whoever reads our output see its end now
                    os.dup2(devnull, fd)
                time.sleep(REPEAT_AFTER)
                for address in sent:
                    announce(interface, address)
        except OSError:
            pass
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return True
