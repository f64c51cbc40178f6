"""`egress-router demo`: a before/after table of what an external server sees, in a namespace lab."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

from egress_router.lab import Lab, LabError, Seen
from egress_router.lab import topology as t

DESTINATION = """\
80 tcp 203.0.113.25
8080 tcp 203.0.113.26 80
53 udp 203.0.113.27
203.0.113.50"""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _probe(action: Callable[[], Seen]) -> tuple[str, str]:
    try:
        seen = action()
    except OSError as error:
        reason = "refused by the site firewall" if error.errno in (113, 111) or isinstance(error, TimeoutError) else str(error)
        return "-", reason
    return f"{seen.client}", f"reached {seen.server}:{seen.port}/{seen.proto}"


def _rows(lab: Lab) -> list[tuple[str, str, str]]:
    router = t.ROUTER_IP
    probes: list[tuple[str, Callable[[], Seen]]] = [
        (f"client -> {t.PUBLIC_SERVER}:80 directly (public server)", lambda: lab.tcp("client", t.PUBLIC_SERVER, 80)),
        ("client -> 203.0.113.25:80 directly (protected)", lambda: lab.tcp("client", "203.0.113.25", 80, timeout=2)),
        ("client -> router:80 (rule: 80 tcp 203.0.113.25)", lambda: lab.tcp("client", router, 80)),
        ("client -> router:8080 (rule: remote port 80)", lambda: lab.tcp("client", router, 8080)),
        ("client -> router:53/udp (rule: 53 udp)", lambda: lab.udp("client", router, 53)),
        ("client -> router:9000 (fallback)", lambda: lab.tcp("client", router, 9000)),
    ]
    return [(label, *_probe(action)) for label, action in probes]


def _table(rows: list[tuple[str, str, str]]) -> str:
    header = ("path", "server saw source", "result")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run() -> int:
    if sys.platform != "linux" or os.geteuid() != 0:
        print("egress-router demo: error: run it as root on Linux (it builds network namespaces)", file=sys.stderr)
        return 1
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        print(f"egress-router demo: error: missing {', '.join(missing)} (apt-get install iproute2 nftables)", file=sys.stderr)
        return 1
    previous = signal.signal(signal.SIGTERM, _interrupt)
    lab = Lab()
    try:
        print(f"Building a cluster in network namespaces {lab.prefix}-* ...")
        lab.build()
        print(
            f"  node {t.NODE_IP}, client pod {t.CLIENT_IP}, router pod {t.ROUTER_IP} with macvlan0, "
            f"site firewall at {t.GATEWAY_IP} lets only {t.EGRESS_RANGE} reach 203.0.113.25-27\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("EGRESS_")}
        env.update(EGRESS_SOURCE=t.EGRESS_SOURCE, EGRESS_GATEWAY=t.GATEWAY_IP, EGRESS_DESTINATION=DESTINATION, EGRESS_ROUTER_MODE="init")
        print(f"egress-router init in the router pod with EGRESS_SOURCE={t.EGRESS_SOURCE} EGRESS_GATEWAY={t.GATEWAY_IP}")
        print("  EGRESS_DESTINATION=" + DESTINATION.replace("\n", "\n                     "))
        started = time.monotonic()
        done = lab.run_in("router", [sys.executable, "-m", "egress_router", "init"], env=env)
        if done.returncode != 0:
            print(f"egress-router demo: error: init failed:\n{done.stderr}", file=sys.stderr)
            return 1
        print(f"  done in {time.monotonic() - started:.2f} s\n")
        print(_table(_rows(lab)))
        print(f"\nThe node's address {t.NODE_IP} changes with the node; {t.EGRESS_SOURCE} is what the firewall whitelists.")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except LabError as error:
        print(f"egress-router demo: error: could not build the lab: {error}", file=sys.stderr)
        return 1
    finally:
        lab.close()
        signal.signal(signal.SIGTERM, previous)
        print("Cleaned up: every lab namespace and process is gone.")
