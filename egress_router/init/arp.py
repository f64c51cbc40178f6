"""Gratuitous ARP, so LAN hosts that knew EGRESS_SOURCE at an old pod's MAC learn the new one."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
import time
from ipaddress import IPv4Address

log = logging.getLogger(__name__)

ETH_P_ARP = 0x0806
SIOCGIFHWADDR = 0x8927
BROADCAST = b"\xff" * 6
#: The second announcement: after the first, and after the 1 s neighbour locktime of Linux peers.
REPEAT_AFTER = 2.0


def announcement(mac: bytes, address: IPv4Address) -> bytes:
    """An ARP announcement (RFC 5227): a broadcast request whose sender and target are our address."""
    if len(mac) != 6:
        raise ValueError("a MAC address is 6 bytes")
    ip = address.packed
    ethernet = BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\x00" * 6 + ip
    return ethernet + arp


def announce(interface: str, address: IPv4Address) -> None:
    # Protocol 0 and sendto, not bind: a socket bound to a protocol joins the receive path, and joining and
    # leaving it costs two RCU grace periods (~15 ms of every init); this socket only ever sends.
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
        request = struct.pack("256s", interface.encode())
        mac = fcntl.ioctl(sock, SIOCGIFHWADDR, request)[18:24]
        sock.sendto(announcement(mac, address), (interface, ETH_P_ARP))
    log.debug("gratuitous ARP for %s sent on %s", address, interface)


def announce_now_and_later(interface: str, address: IPv4Address) -> bool:
    """Announce now, and again REPEAT_AFTER seconds later from a detached grandchild.

    The caller never waits (init exits at once) and no zombie is left behind (the child is reaped here).
    """
    try:
        announce(interface, address)
    except OSError as error:
        log.warning("could not send gratuitous ARP on %s: %s (neighbours will learn the address when they ask)", interface, error.strerror)
        return False
    log.info("announced %s on %s with gratuitous ARP", address, interface)
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):  # let whoever reads our output see its end now
                    os.dup2(devnull, fd)
                time.sleep(REPEAT_AFTER)
                announce(interface, address)
        except OSError:
            pass
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return True
