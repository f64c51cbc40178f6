"""Entering a network namespace for a moment, to open sockets that then live there."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2.netns import setns

NETNS_DIR = "/run/netns"


def netns_path(name: str) -> str:
    return name if name.startswith("/") else f"{NETNS_DIR}/{name}"


@contextmanager
def entered(name: str) -> Iterator[None]:
    """Switch this thread into namespace `name` and back; a socket keeps the namespace it was made in."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns(netns_path(name), flags=0)
        try:
            yield
        finally:
            setns(home, flags=0)
    finally:
        os.close(home)


def socket_in(name: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    with entered(name):
        return socket.socket(family, kind)


def family_of(host: str) -> int:
    """The address family a socket to `host` (an address) needs."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET
