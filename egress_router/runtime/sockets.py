"""Listening sockets for the long-running proxies: one dual-stack socket per worker, SO_REUSEPORT."""

from __future__ import annotations

import errno
import socket

from egress_router.errors import ApplyError


def listen(port: int, *, reuse_port: bool, backlog: int | None = 1024) -> socket.socket:
    """IPv6 and IPv4 on one socket ([::] with V6ONLY off); IPv4 only where the pod has no IPv6.

    With `backlog=None` the socket is only bound, not listening: a check that the port can be had which
    no client can connect to in the meantime.
    """
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple[str, int] = ("::", port)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = ("0.0.0.0", port)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(address)
        except OSError as error:
            if address[0] == "::" and error.errno == errno.EADDRNOTAVAIL:  # IPv6 disabled in the pod
                sock.close()
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(("0.0.0.0", port))
            else:
                raise
        if backlog is not None:
            sock.listen(backlog)
        sock.setblocking(False)
        return sock
    except OSError as error:
        sock.close()
        hint = ""
        if error.errno == errno.EACCES and port < 1024:
            hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE; the proxies run unprivileged on 1024 and up)"
        elif error.errno == errno.EADDRINUSE:
            hint = " (another process listens there)"
        raise ApplyError(f"cannot listen on port {port}: {error.strerror}{hint}") from error


def check_free(port: int) -> None:
    """Fail now, with a clear ApplyError, if `port` cannot be had: before anything starts serving."""
    listen(port, reuse_port=False, backlog=None).close()
