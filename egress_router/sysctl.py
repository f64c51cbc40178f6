"""IPv4 forwarding for the pod's namespace (/proc/sys/net is per network namespace)."""

from __future__ import annotations

import logging

from egress_router.errors import ApplyError
from egress_router.netlink import Journal

log = logging.getLogger(__name__)

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def enable_forwarding(journal: Journal, path: str = IP_FORWARD) -> bool:
    try:
        with open(path, encoding="ascii") as f:
            before = f.read().strip()
        if before == "1":
            return False
        _write(path, "1")
    except OSError as error:
        hint = " (is the init container privileged?)" if error.errno in (1, 13, 30) else ""
        raise ApplyError(f"cannot enable IPv4 forwarding in {path}: {error.strerror}{hint}") from error
    journal.record("enable forwarding", lambda: _write(path, before))
    log.info("enabled IPv4 forwarding")
    return True
