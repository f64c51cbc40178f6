"""`egress-router demo`: a before/after table of what an external server sees, in a namespace lab."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from egress_router.lab import Lab, LabError, Seen
from egress_router.lab import topology as t
from egress_router.lab.dns import DNS, DnsServer
from egress_router.lab.service import Service
from egress_router.lab.topology import Process, environment

DESTINATION = """\
80 tcp 203.0.113.25
8080 tcp 203.0.113.26 80
53 udp 203.0.113.27
203.0.113.50"""
PROXY_POD_IP = "10.128.0.30"
DNS_POD_IP = "10.128.0.40"
DNS_SOURCE = "192.168.12.101"
PROXY_SOURCE = "192.168.12.100"
PROXY_LIST = """\
!10.0.0.0/8
api.example.test
*.partner.test"""
PROXY_HOSTS = """127.0.0.1 localhost
203.0.113.25 api.example.test
203.0.113.26 www.partner.test other.example.test
10.128.0.10 sneaky.partner.test
"""
POOL = "192.168.12.110-192.168.12.111/24"
POOL_SERVICE = "172.30.0.60"
POOL_PODS = {"egress-0": "10.128.0.50", "egress-1": "10.128.0.51"}


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
        ("client2 on node2 -> router:80 (routed, no NAT)", lambda: lab.tcp("client2", router, 80)),
    ]
    return [(label, *_probe(action)) for label, action in probes]


def _curl(lab: Lab, client: str, url: str) -> tuple[str, str]:
    """What the origin saw for a request through the HTTP proxy pod, or the proxy's reason for refusing."""
    done = subprocess.run(
        lab.exec_argv(client, ["curl", "-sS", "--max-time", "5", "-x", f"http://{PROXY_POD_IP}:8080", "-w", "\n%{http_code}", url]),
        capture_output=True,
        text=True,
    )
    body, _, code = done.stdout.rpartition("\n")
    if code == "200":
        return json.loads(body)["client"], "200, allowed"
    reason = body.strip().split(": ", 2)[-1] if body else done.stderr.strip()
    return "-", f"{code}, {reason}"


def _proxy_rows(lab: Lab) -> list[tuple[str, str, str]]:
    urls = [
        ("client -> proxy -> http://api.example.test:8000/", "http://api.example.test:8000/"),
        ("client -> proxy -> http://www.partner.test:8000/", "http://www.partner.test:8000/"),
        ("client -> proxy -> http://other.example.test:8000/", "http://other.example.test:8000/"),
        ("client -> proxy -> http://sneaky.partner.test:8000/", "http://sneaky.partner.test:8000/"),
    ]
    rows = [(label, *_curl(lab, "client", url)) for label, url in urls]
    rows.append(("client2 on node2 -> proxy -> http://api.example.test:8000/", *_curl(lab, "client2", "http://api.example.test:8000/")))
    return rows


def _start_http_proxy(lab: Lab, env: dict[str, str]) -> None:
    """A second router pod in http-proxy mode, its proxy running unprivileged, an origin on port 8000."""
    lab.add_router(
        "proxy", PROXY_POD_IP, {"EGRESS_SOURCE": PROXY_SOURCE, "EGRESS_GATEWAY": t.GATEWAY_IP, "EGRESS_ROUTER_MODE": "http-proxy"}
    )
    lab.write_etc("proxy", "hosts", PROXY_HOSTS)
    lab.write_etc("proxy", "resolv.conf", "nameserver 127.0.0.1\n")
    lab.python_in("server", "egress_router.lab.http_server", "--http", "0.0.0.0:8000", ready_line="ready")
    proxy_env = {
        **environment(),
        "EGRESS_HTTP_PROXY_DESTINATION": PROXY_LIST,
        "EGRESS_HTTP_PROXY_WORKERS": "1",
    }
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "egress_router", "http-proxy"]
    proxy = lab.start_in("proxy", argv, env=proxy_env)
    lab.wait_for_port("client", PROXY_POD_IP, 8080, process=proxy)


def _dns_rows(lab: Lab, env: dict[str, str], folder: Path) -> list[tuple[str, str, str]]:
    """A third router pod in dns-proxy mode relaying port 5432 to db.lab.test, whose record then changes."""
    dns = DnsServer.site(lab, "203.0.113.25 db.lab.test\n")
    dns.start()
    lab.add_router("dns", DNS_POD_IP, {"EGRESS_SOURCE": DNS_SOURCE, "EGRESS_GATEWAY": t.GATEWAY_IP, "EGRESS_ROUTER_MODE": "dns-proxy"})
    lab.write_etc("dns", "resolv.conf", f"nameserver {DNS}\n")
    proxy_env = {**environment(), "EGRESS_DNS_PROXY_DESTINATION": "5432 db.lab.test"}
    proxy = lab.start_in(
        "dns",
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "egress_router", "dns-proxy"],
        env=proxy_env,
    )
    lab.wait_for_port("client", DNS_POD_IP, 5432, process=proxy)
    rows = [("client -> dns-proxy:5432 (db.lab.test is 203.0.113.25)", *_probe(lambda: lab.tcp("client", DNS_POD_IP, 5432)))]
    dns.set("203.0.113.26 db.lab.test\n")
    changed = time.monotonic()
    seen = "-", "not followed within 5 s"
    while time.monotonic() - changed < 5:
        seen = _probe(lambda: lab.tcp("client", DNS_POD_IP, 5432))
        if "203.0.113.26" in seen[1]:
            seen = seen[0], f"{seen[1]} after {time.monotonic() - changed:.1f} s"
            break
        time.sleep(0.1)
    rows.append(("client -> dns-proxy:5432 (record changed to .26)", *seen))
    return rows


def _pool_pod(lab: Lab, name: str, ip: str) -> tuple[str, Process | None]:
    """A StatefulSet pod `name`: init takes the pool's address at its ordinal, then the monitor answers /readyz.
    Returns init's last line, and the monitor (None when init refused)."""
    role = f"pool{ip.rsplit('.', 1)[1]}"
    lab.add_pod(role, ip)
    lab.add_macvlan(role)
    env = {"EGRESS_SOURCE": POOL, "EGRESS_GATEWAY": t.GATEWAY_IP, "EGRESS_DESTINATION": "80 tcp 203.0.113.25", "HOSTNAME": name}
    env["EGRESS_METRICS_PORT"] = "9191"
    argv = [sys.executable, "-m", "egress_router"]
    done = lab.run_in(role, [*argv, "init"], env=environment(**env, EGRESS_ROUTER_MODE="init"))
    last = (done.stderr.strip().splitlines() or [""])[-1]
    if done.returncode != 0:
        return last, None
    return last, lab.start_in(role, [*argv, "monitor"], env=environment(**env, EGRESS_SHUTDOWN_DELAY="2s"))


def _pool_rows(lab: Lab) -> list[tuple[str, str, str]]:
    """Two pods of a StatefulSet behind one Service; a second pod of one ordinal refused; one pod deleted."""
    logging.getLogger("egress_router.lab.service").setLevel(logging.WARNING)  # the table says what changed
    monitors = {name: _pool_pod(lab, name, ip)[1] for name, ip in POOL_PODS.items()}
    rows = []
    with Service(lab, "pool", POOL_SERVICE, list(POOL_PODS.values()), period=0.5, timeout=0.5, propagation=0.5) as service:
        service.wait_ready(list(POOL_PODS.values()))
        for n in range(1, 5):
            rows.append((f"client -> Service {POOL_SERVICE}:80, connection {n}", *_probe(lambda: lab.tcp("client", POOL_SERVICE, 80))))
        refusal, _ = _pool_pod(lab, "egress-1", "10.128.0.52")  # the same name again: its address is held
        reason = refusal.split("error: EGRESS_SOURCE: ", 1)[-1].split(" (another", 1)[0]
        rows.append(("a second pod egress-1 (10.128.0.52) runs init", "-", f"refused: {reason}"))
        first = monitors["egress-0"]
        assert first is not None
        first.popen.send_signal(signal.SIGTERM)  # deleted: unready at once, serving for EGRESS_SHUTDOWN_DELAY=2s
        seen: list[str] = []
        started = time.monotonic()
        while time.monotonic() - started < 3:
            seen.append(_probe(lambda: lab.tcp("client", POOL_SERVICE, 80, timeout=2))[0])
            time.sleep(0.1)
        first.popen.wait(10)
        lab.remove_namespace(f"pool{POOL_PODS['egress-0'].rsplit('.', 1)[1]}")
        after = [_probe(lambda: lab.tcp("client", POOL_SERVICE, 80))[0] for _ in range(4)]
        counts = ", ".join(f"{seen.count(source)} via {source}" for source in sorted(set(seen) - {"-"}))
        rows.append((f"egress-0 deleted: {len(seen)} new connections in 3 s", counts, f"{seen.count('-')} failed"))
        rows.append(("client -> Service after egress-0 is gone (x4)", ", ".join(sorted(set(after))), f"{after.count('-')} failed"))
    return rows


def _table(rows: list[tuple[str, str, str]]) -> str:
    header = ("path", "server saw source", "result")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run() -> int:
    if sys.platform != "linux" or os.geteuid() != 0:
        print("egress-router demo: error: run it as root on Linux (it builds network namespaces)", file=sys.stderr)
        return 1
    missing = [tool for tool in ("ip", "nft", "curl", "setpriv", "dnsmasq") if shutil.which(tool) is None]
    if missing:
        print(
            f"egress-router demo: error: missing {', '.join(missing)} (apt-get install iproute2 nftables curl util-linux dnsmasq-base)",
            file=sys.stderr,
        )
        return 1
    previous = signal.signal(signal.SIGTERM, _interrupt)
    lab = Lab()
    try:
        print(f"Building a cluster in network namespaces {lab.prefix}-* ...")
        lab.build()
        print(
            f"  node {t.NODE_IP}: client pod {t.CLIENT_IP}, router pod {t.ROUTER_IP} with macvlan0; "
            f"node2 {t.NODE2_IP}: client2 pod {t.CLIENT2_IP}, routed to node's pods without NAT;\n"
            f"  site firewall at {t.GATEWAY_IP} lets only {t.EGRESS_RANGE} reach 203.0.113.25-27\n"
        )
        env = environment(
            EGRESS_SOURCE=t.EGRESS_SOURCE, EGRESS_GATEWAY=t.GATEWAY_IP, EGRESS_DESTINATION=DESTINATION, EGRESS_ROUTER_MODE="init"
        )
        print(f"egress-router init in the router pod with EGRESS_SOURCE={t.EGRESS_SOURCE} EGRESS_GATEWAY={t.GATEWAY_IP}")
        print("  EGRESS_DESTINATION=" + DESTINATION.replace("\n", "\n                     "))
        started = time.monotonic()
        done = lab.run_in("router", [sys.executable, "-m", "egress_router", "init"], env=env)
        if done.returncode != 0:
            print(f"egress-router demo: error: init failed:\n{done.stderr}", file=sys.stderr)
            return 1
        print(f"  done in {time.monotonic() - started:.2f} s\n")
        print(_table(_rows(lab)))
        print(f"\nThe node's address {t.NODE_IP} changes with the node; {t.EGRESS_SOURCE} is what the firewall whitelists.\n")
        print(f"HTTP proxy mode: a second router pod ({PROXY_POD_IP}, EGRESS_SOURCE={PROXY_SOURCE}) runs egress-router http-proxy")
        print("  unprivileged, with EGRESS_HTTP_PROXY_DESTINATION=" + PROXY_LIST.replace("\n", "\n" + " " * 45) + "\n")
        _start_http_proxy(lab, env)
        print(_table(_proxy_rows(lab)))
        print(f"\nDNS proxy mode: a third router pod ({DNS_POD_IP}, EGRESS_SOURCE={DNS_SOURCE}) runs egress-router dns-proxy")
        print("  unprivileged, with EGRESS_DNS_PROXY_DESTINATION=5432 db.lab.test; dnsmasq serves db.lab.test with a 1 s TTL\n")
        with tempfile.TemporaryDirectory() as folder:
            print(_table(_dns_rows(lab, env, Path(folder))))
        print(f"\nA pool behind one Service: StatefulSet pods egress-0 and egress-1 with EGRESS_SOURCE={POOL}, each taking the")
        print("  address at its ordinal (redirect mode, the monitor answering readiness probes); a Service stand-in on both nodes")
        print("  sends each new connection to a ready pod in turn\n")
        print(_table(_pool_rows(lab)))
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
